"""Checkpoints: ``best.ckpt`` (highest ``val/acc``), ``last.ckpt`` after every epoch and on
interruption, all written to a temporary file beside the target and renamed into place.
"""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from weakref import proxy

import torch
from lightning_fabric.plugins import TorchCheckpointIO
from pytorch_lightning import Callback
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.utilities.exceptions import SIGTERMException


def create_checkpoints(run_dir: Path) -> list[Callback]:
    best = ModelCheckpoint(dirpath=run_dir / "checkpoints", filename="best", monitor="val/acc", mode="max",
                           auto_insert_metric_name=False)
    return [best, LastCheckpoint(best, run_dir / "checkpoints"), CheckpointOnInterrupt(run_dir)]


class StreamingCheckpointIO(TorchCheckpointIO):
    """``torch.save`` straight into a temporary file, then rename. Lightning's own first serialises
    the whole checkpoint into memory and then copies it to the file: twice the host memory for a
    large model and a third slower."""

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        if storage_options is not None or "://" in str(path):  # remote storage: Lightning's fsspec path
            return super().save_checkpoint(checkpoint, path, storage_options)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            torch.save(checkpoint, tmp)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)


class LastCheckpoint(ModelCheckpoint):
    """``last.ckpt`` after every epoch; in an epoch where ``best`` just wrote the same state, a hard
    link to its file instead of a second write.

    Lightning's ``save_last`` only writes when a top-k checkpoint was saved, and its ``"link"`` mode
    points at the best checkpoint even in epochs that did not improve, so resuming would go back in
    time. With a frozen backbone and cached features an epoch takes milliseconds and writing the
    whole model twice was most of the run. Every checkpoint is written to a temporary file and
    renamed, so a later write to either name never changes the other's content.
    """

    def __init__(self, best: ModelCheckpoint, dirpath: Path):
        super().__init__(dirpath=dirpath, filename="last", monitor=None, enable_version_counter=False)
        self.best = best

    def _save_checkpoint(self, trainer, filepath: str) -> None:
        source = self.best.best_model_path
        if not (self.best._last_global_step_saved == trainer.global_step and source and os.path.isfile(source)):
            return super()._save_checkpoint(trainer, filepath)
        if trainer.is_global_zero:
            try:
                tmp = f"{filepath}.link"
                if os.path.lexists(tmp):
                    os.remove(tmp)
                os.link(source, tmp)
                os.replace(tmp, filepath)
            except OSError:  # a filesystem without hard links
                shutil.copyfile(source, tmp)
                os.replace(tmp, filepath)
        trainer.strategy.barrier("LastCheckpoint")
        self._last_global_step_saved, self._last_checkpoint_saved = trainer.global_step, filepath
        if trainer.is_global_zero:  # as ModelCheckpoint does after a write
            for logger in trainer.loggers:
                logger.after_save_checkpoint(proxy(self))


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


