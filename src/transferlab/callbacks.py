"""Lightning callbacks every run gets (besides the strategy and checkpointing)."""
from __future__ import annotations

import logging
import sys
from pathlib import Path

from pytorch_lightning import Callback
from pytorch_lightning.utilities.exceptions import SIGTERMException

log = logging.getLogger(__name__)


class SampleCounter(Callback):
    """Counts training samples, for ``train_samples_per_second``."""

    def __init__(self):
        self.samples = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.samples += sum(item[0].shape[0] for item in batch.values() if item is not None)


class CheckpointOnInterrupt(Callback):
    """On SIGTERM (pre-emption, ``kill``, SLURM's time limit) or Ctrl-C, save ``last.ckpt`` before exiting.

    Lightning stops after the current batch when SIGTERM arrives; this saves where it stopped
    (written to a temporary file and renamed, like every Lightning checkpoint) and says how to resume.
    """

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        if not isinstance(exception, (SIGTERMException, KeyboardInterrupt)) or trainer.state.fn != "fit":
            return
        path = self.run_dir / "checkpoints" / "last.ckpt"
        trainer.save_checkpoint(path)
        if trainer.is_global_zero:
            print(f"interrupted at epoch {trainer.current_epoch}, step {trainer.global_step}; saved {path}\n"
                  f"resume with: tl-train resume={self.run_dir}", file=sys.stderr, flush=True)
