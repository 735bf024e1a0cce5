"""What every benchmark shares: the environment, the settings, composing a plan, timing."""
from __future__ import annotations

import logging
import os
import platform
import time
import warnings
from pathlib import Path

# Never touch the network (weights are random: speed does not depend on them) and stay quiet.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("PYTHONWARNINGS", "ignore")  # DataLoader workers inherit it
warnings.filterwarnings("ignore")

import pytorch_lightning as pl  # noqa: E402
import torch  # noqa: E402
from pytorch_lightning import Callback  # noqa: E402

from transferlab import run  # noqa: E402
from transferlab.config import compose_config  # noqa: E402
from transferlab.data import batch_size  # noqa: E402
from transferlab.plan import resolve  # noqa: E402

for _name in ("pytorch_lightning", "lightning", "lightning.pytorch", "lightning_fabric", "transferlab"):
    logging.getLogger(_name).setLevel(logging.ERROR)

# Settings. CPU: the small model (model=tiny, timm's test_resnet) at 64 px, batch 64, on the bundled
# digits (1078 training images, augmented, loaded in the main process): ~0.1 GFLOP per image for
# forward + backward, about a tenth of a second of compute per step on one core. The linear probe
# uses ResNet-18 at 64 px, where the frozen backbone's forward pass dominates an uncached epoch, as it
# does in real linear probing. On a GPU: ResNet-50 at 224 px, bf16, on pre-decoded images.
CPU_SETTING = ["model=tiny", "data=digits", "data.input_size=64", "data.batch_size=64"]
CPU_PROBE_SETTING = ["model.name=resnet18", "data=digits", "data.input_size=64", "data.batch_size=64"]
CPU_QUICK_SETTING = ["model=tiny", "data=digits", "data.input_size=32", "data.batch_size=64"]
GPU_SETTING = ["model=resnet50", "data=synthetic", "tasks.main.column=shape", "data.num_samples=4000",
               "data.input_size=224", "data.batch_size=128", "data.num_workers=4", "trainer.precision=bf16-mixed"]
COMMON = ["model.pretrained=false", "source=none", "logger=none", "trainer.enable_progress_bar=false",
          "trainer.enable_model_summary=false"]
# Throughput runs measure training only: no validation, no checkpoints.
NO_EVAL = ["strategy=finetune", "+trainer.enable_checkpointing=false", "+trainer.limit_val_batches=0",
           "trainer.num_sanity_val_steps=0"]

# Dense (no sparsity) bf16 tensor-core peak FLOP/s by GPU name; the first matching key wins.
PEAK_BF16_FLOPS = [
    ("H100 PCIe", 756e12), ("H100 NVL", 835e12), ("H100", 989e12), ("H200", 989e12), ("GH200", 989e12),
    ("B200", 2250e12), ("A100", 312e12), ("A800", 312e12), ("L40S", 362e12), ("L40", 181e12),
    ("L4", 121e12), ("A10G", 70e12), ("A10", 125e12), ("RTX 4090", 165e12), ("RTX 3090", 71e12),
    ("V100", 125e12),  # V100 has no bf16 tensor cores; its fp16 peak as an upper bound
]


def peak_flops(device_name: str) -> float | None:
    return next((v for k, v in PEAK_BF16_FLOPS if k.lower() in device_name.lower()), None)


def compose(overrides: list[str], run_dir: Path):
    """The read-only plan of a config composed from ``overrides``, run in ``run_dir``."""
    return resolve(compose_config(list(overrides)), {"paths.run_dir": str(run_dir)})


def build(plan) -> run.Parts:
    """``run.build`` after preparing (a tokenizer to train) and seeding, as tl-train does."""
    run.prepare(plan)
    pl.seed_everything(plan.seed, workers=True, verbose=False)
    return run.build(plan)


def train_loader(datamodule):
    """The DataLoader of the run's own data stream, the very one Lightning iterates."""
    return datamodule.train_dataloader().iterables["data"]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def throughput(samples: int, seconds: float, cpu_seconds: float) -> dict:
    return {"seconds": seconds, "samples": samples, "samples_per_s": samples / seconds,
            "samples_per_cpu_s": samples / cpu_seconds}


class EpochTimer(Callback):
    """Wall-clock time of each training epoch (start to next start, so validation and checkpoints count)."""

    def __init__(self, warmup: int = 0):
        self.warmup, self.starts, self.samples, self.end, self.device = warmup, [], 0, None, torch.device("cpu")

    def on_train_epoch_start(self, trainer, pl_module):
        self.device = pl_module.device
        sync(self.device)
        self.starts.append(time.perf_counter())
        if trainer.current_epoch == self.warmup:
            self.cpu_start = time.process_time()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.current_epoch >= self.warmup:
            self.samples += sum(batch_size(item[0]) for item in batch.values() if item is not None)

    def on_train_epoch_end(self, trainer, pl_module):
        sync(self.device)
        self.epoch_end = time.perf_counter()
        self.cpu_end = time.process_time()

    def on_train_end(self, trainer, pl_module):
        sync(self.device)
        self.end = time.perf_counter()

    def epoch_seconds(self) -> list[float]:
        return [b - a for a, b in zip(self.starts, self.starts[1:] + [self.end])]

    def steady(self) -> dict:
        """Training-only throughput over the epochs after the warm-up (start of first timed epoch to end of last)."""
        return throughput(self.samples, self.epoch_end - self.starts[self.warmup], self.cpu_end - self.cpu_start)


def choose_threads(requested: int | None) -> tuple[int, str]:
    """All cores, unless the machine is already busy: then one thread, because OpenMP threads that
    wait for each other at every op's barrier while other processes hold the cores run several
    times slower than a single thread and make every figure noise."""
    cores = os.cpu_count() or 1
    if requested:
        return requested, "--threads"
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    if cores > 1 and load >= cores - 0.5:
        return 1, f"1-minute load average {load:.1f} on {cores} cores: other processes compete, 1 thread is steadier"
    return cores, f"all {cores} cores (load average {load:.1f})"


def environment(threads: int) -> dict:
    import timm

    return {"python": platform.python_version(), "torch": torch.__version__, "pytorch_lightning": pl.__version__,
            "timm": timm.__version__, "cpu_count": os.cpu_count(), "torch_threads": threads,
            "torch_threads_after": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
            "load_average_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None}
