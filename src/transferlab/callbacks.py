"""Lightning callbacks every run gets (besides the checkpoints, in ``checkpoints``)."""
from __future__ import annotations

import logging
import time

from pytorch_lightning import Callback

from transferlab import metrics as names
from transferlab.data import batch_size

log = logging.getLogger(__name__)


class ApplyStrategy(Callback):
    """Applies a transfer strategy (``strategies``: settings and a schedule) at every epoch: which stages
    train, and which BatchNorm layers stay in eval mode after Lightning puts the module back in train mode."""

    def __init__(self, strategy):
        self.strategy = strategy

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.strategy.apply(pl_module.model, trainer.current_epoch)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.strategy.set_norm_modes()


class SampleCounter(Callback):
    """Counts training samples, for ``train_samples_per_second``, and times the training steps (forward,
    backward and optimizer step, without data loading or validation), for ``train_step_seconds``."""

    def __init__(self):
        self.samples, self.steps, self.step_seconds = 0, 0, 0.0
        self._start = None
        self._events: list = []  # (start, end) CUDA events of steps not yet read

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._start = _now(pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.samples += sum(batch_size(item[0]) for item in batch.values() if item is not None)
        self.steps += 1
        end = _now(pl_module)
        if isinstance(end, float):
            self.step_seconds += end - self._start
        else:
            self._events.append((self._start, end))

    def on_train_epoch_end(self, trainer, pl_module):
        self._read_events()

    def on_fit_end(self, trainer, pl_module):
        self._read_events()

    def _read_events(self) -> None:
        """One wait per epoch for the GPU steps' times, not one per step (``module._check_finite`` avoids them too)."""
        if self._events:
            self._events[-1][1].synchronize()
            self.step_seconds += sum(start.elapsed_time(end) for start, end in self._events) / 1000
            self._events = []


def _now(pl_module):
    """Now, for timing a step: on CPU the host's clock; on a GPU a CUDA event recorded on its stream, so the
    step's time is its kernels' time and the host does not wait for them."""
    if pl_module.device.type != "cuda":
        return time.perf_counter()
    import torch

    event = torch.cuda.Event(enable_timing=True)
    event.record()
    return event


class PeakMemory(Callback):
    """The peak memory of fitting, for ``peak_memory_mb``: on a GPU the most torch allocated; on CPU the
    process's peak resident set (VmHWM, reset when fitting starts, so each job of a sweep in one process
    counts its own; the process's lifetime peak where the kernel cannot reset it)."""

    def __init__(self):
        self.mb: float | None = None

    def on_fit_start(self, trainer, pl_module):
        if pl_module.device.type == "cuda":
            import torch

            torch.cuda.reset_peak_memory_stats(pl_module.device)
            return
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            pass

    def on_fit_end(self, trainer, pl_module):
        if pl_module.device.type == "cuda":
            import torch

            self.mb = torch.cuda.max_memory_allocated(pl_module.device) / 2**20
            return
        try:
            with open("/proc/self/status") as f:
                self.mb = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024
        except (OSError, StopIteration):
            import resource

            self.mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class LearningRates(Callback):
    """The learning rate each optimizer group actually trained at, read where the optimizer reads it
    (group ``lr`` at the start of each step, after every strategy, scale and schedule): the first and
    the last step per group, and the peak of the backbone's and the heads' groups. A group whose
    parameters are all frozen in a step trains at 0 there, so a linear probe's backbone peak is 0 and
    LP-FT's is its fine-tuning rate. Plain floats: the state survives a resume in the checkpoint."""

    def __init__(self):
        self.first, self.last, self.peak = {}, {}, dict.fromkeys(names.LR_KINDS, 0.0)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        for group in trainer.optimizers[0].param_groups:
            trains = any(p.requires_grad for p in group["params"])
            lr = float(group["lr"]) if trains else 0.0
            self.first.setdefault(group["name"], lr)
            self.last[group["name"]] = lr
            kind = group["name"].split(".")[0]
            if kind in self.peak or kind == names.ADAPTERS:  # the adapters' peak only where there are adapters
                self.peak[kind] = max(self.peak.get(kind, 0.0), lr)

    def on_train_epoch_end(self, trainer, pl_module):
        for kind in names.LR_KINDS:  # W&B / CSV curve: the fastest group of each kind at the epoch's last step
            pl_module.log(f"lr/{kind}", max((v for k, v in self.last.items() if k.split(".")[0] == kind),
                                            default=0.0))

    def summary(self) -> dict[str, float]:
        return {**{names.lr(g, "first"): v for g, v in self.first.items()},
                **{names.lr(g, "last"): v for g, v in self.last.items()},
                **{names.lr(kind, "peak"): v for kind, v in self.peak.items()}}

    def state_dict(self) -> dict:
        return {"first": dict(self.first), "last": dict(self.last), "peak": dict(self.peak)}

    def load_state_dict(self, state: dict) -> None:
        self.first, self.last, self.peak = dict(state["first"]), dict(state["last"]), dict(state["peak"])


class RandomState(Callback):
    """Saves the python, numpy and torch random generators in every checkpoint and restores them on
    resume, so a resumed run shuffles and augments as the uninterrupted run would have.

    Stored as tensors and lists only, so checkpoints still load with ``weights_only=True``.
    """

    def state_dict(self) -> dict:
        import random

        import numpy as np
        import torch

        kind, keys, pos, has_gauss, gauss = np.random.get_state()
        state = {"python": [list(x) if isinstance(x, tuple) else x for x in random.getstate()],
                 "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
                 "torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state: dict) -> None:
        import random

        import numpy as np
        import torch

        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))
        kind, keys, pos, has_gauss, cached = state["numpy"]
        np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
        torch.set_rng_state(state["torch"])
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])
