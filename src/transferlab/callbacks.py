"""Lightning callbacks every run gets (besides the strategy and checkpoints, in ``checkpoints``)."""
from __future__ import annotations

import logging

from pytorch_lightning import Callback

from transferlab.data import batch_size

log = logging.getLogger(__name__)


class SampleCounter(Callback):
    """Counts training samples, for ``train_samples_per_second``."""

    def __init__(self):
        self.samples = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.samples += sum(batch_size(item[0]) for item in batch.values() if item is not None)


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
