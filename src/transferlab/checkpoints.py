"""Writing checkpoints: ``best.ckpt`` by the monitored metric, ``last.ckpt`` after every epoch, each
written to a temporary file beside the target and renamed into place. Reading them (tensors only,
whoever wrote them) is ``models.checkpoint``'s.
"""
from __future__ import annotations

import errno
import logging
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

from transferlab import metrics
from transferlab.errors import CheckpointError
from transferlab.models.checkpoint import read_checkpoint
from transferlab.runs import BEST, CHECKPOINTS, LAST, resume_command

log = logging.getLogger(__name__)


def create_checkpoints(run_dir: Path) -> list[Callback]:
    folder = run_dir / CHECKPOINTS
    best = RelocatableCheckpoint(dirpath=folder, filename=Path(BEST).stem, monitor=metrics.MONITOR, mode="max",
                                 auto_insert_metric_name=False)
    return [best, LastCheckpoint(best, folder), CheckpointOnInterrupt(run_dir)]


class RelocatableCheckpoint(ModelCheckpoint):
    """Paths inside a checkpoint are read relative to the folder it was written in, so a run directory
    that was moved or copied before ``resume=`` keeps its best checkpoint and score (Lightning forgets
    both when the folder's name changed, and would then save and test a worse epoch as "best")."""

    def load_state_dict(self, state_dict: dict) -> None:
        old, new = state_dict.get("dirpath"), self.dirpath
        if old and new and old != new:
            def moved(path):
                if not isinstance(path, str) or not path:
                    return path
                return os.path.join(new, os.path.relpath(path, old)) if Path(path).is_relative_to(old) else path
            state_dict = {**state_dict, "dirpath": new, **{k: moved(state_dict.get(k)) for k in (
                "best_model_path", "kth_best_model_path", "last_model_path")},
                "best_k_models": {moved(k): v for k, v in (state_dict.get("best_k_models") or {}).items()}}
        super().load_state_dict(state_dict)


class StreamingCheckpointIO(TorchCheckpointIO):
    """``torch.save`` straight into a temporary file, then rename. Lightning's own first serialises
    the whole checkpoint into memory and then copies it to the file: twice the host memory for a
    large model and a third slower. Reading (``ckpt_path=``, ``resume=``, testing the best) goes
    through ``read_checkpoint``: tensors only, whatever torch's default."""

    def load_checkpoint(self, path, map_location=None, weights_only=None) -> dict:
        if "://" in str(path):
            return super().load_checkpoint(path, map_location, weights_only=True)
        ckpt = read_checkpoint(path)
        if "pytorch-lightning_version" not in ckpt:
            raise CheckpointError(f"'{path}' is not a Lightning checkpoint of a transferlab run, so training cannot "
                                  f"continue from it (ckpt_path= / resume=); to start from its weights use "
                                  f"model.checkpoint={path}")
        return ckpt

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        if storage_options is not None or "://" in str(path):  # remote storage: Lightning's fsspec path
            return super().save_checkpoint(checkpoint, path, storage_options)
        path = Path(path)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        writer = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # A file object, not the path: torch's own file writer reports a full disk only as
            # "unexpected pos"; through Python's the OSError (ENOSPC, EDQUOT) is seen and kept.
            with open(tmp, "wb") as f:
                writer = _Recording(f)
                torch.save(checkpoint, writer)
            os.replace(tmp, path)
        except (OSError, RuntimeError) as e:
            error = e if isinstance(e, OSError) else writer and writer.error
            if error is None:
                raise
            raise CheckpointError(_write_failure(path, error)) from e
        finally:
            tmp.unlink(missing_ok=True)


class _Recording:
    """A binary file whose ``write`` keeps the OSError it raised (torch turns it into a RuntimeError)."""

    def __init__(self, f):
        self.f, self.error = f, None

    def write(self, data):
        try:
            return self.f.write(data)
        except OSError as e:
            self.error = e
            raise

    def flush(self):
        try:
            return self.f.flush()
        except OSError as e:
            self.error = e
            raise


def _write_failure(path: Path, error: OSError) -> str:
    """One paragraph for a checkpoint that could not be written: which file, and why in words."""
    why = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded",
           errno.EROFS: "read-only file system", errno.EACCES: "permission denied"}.get(
        error.errno, error.strerror or str(error))
    fix = "free space there" if error.errno in (errno.ENOSPC, errno.EDQUOT) else "make that folder writable"
    return (f"cannot save the checkpoint {path}: {why} (in {path.parent}); no partial file was left (an earlier "
            f"{path.name} is kept as it was); {fix}, or write runs elsewhere (paths.run_dir=...), and run again")


class LastCheckpoint(RelocatableCheckpoint):
    """``last.ckpt`` after every epoch; in an epoch where ``best`` just wrote the same state, a hard
    link to its file instead of a second write.

    Lightning's ``save_last`` only writes when a top-k checkpoint was saved, and its ``"link"`` mode
    points at the best checkpoint even in epochs that did not improve, so resuming would go back in
    time. With a frozen backbone and cached features an epoch takes milliseconds and writing the
    whole model twice was most of the run. Every checkpoint is written to a temporary file and
    renamed, so a later write to either name never changes the other's content.
    """

    def __init__(self, best: ModelCheckpoint, dirpath: Path):
        super().__init__(dirpath=dirpath, filename=Path(LAST).stem, monitor=None, enable_version_counter=False)
        self.best = best

    def _save_checkpoint(self, trainer, filepath: str) -> None:
        source = self.best.best_model_path
        if not (self.best._last_global_step_saved == trainer.global_step and source and os.path.isfile(source)):
            return super()._save_checkpoint(trainer, filepath)
        if trainer.is_global_zero:
            tmp = f"{filepath}.link"
            try:
                try:
                    if os.path.lexists(tmp):
                        os.remove(tmp)
                    os.link(source, tmp)
                    os.replace(tmp, filepath)
                except OSError:  # a filesystem without hard links
                    shutil.copyfile(source, tmp)
                    os.replace(tmp, filepath)
            except OSError as e:
                raise CheckpointError(_write_failure(Path(filepath), e)) from e
            finally:
                if os.path.lexists(tmp):
                    os.remove(tmp)
        trainer.strategy.barrier("LastCheckpoint")
        self._last_global_step_saved, self._last_checkpoint_saved = trainer.global_step, filepath
        if trainer.is_global_zero:  # as ModelCheckpoint does after a write
            for logger in trainer.loggers:
                logger.after_save_checkpoint(proxy(self))


class CheckpointOnInterrupt(Callback):
    """On SIGTERM (pre-emption, ``kill``, SLURM's time limit) or Ctrl-C: say how to resume, and from where.

    Nothing is saved mid-epoch: a mid-epoch checkpoint cannot restore the sampler's order and the
    workers' random state, so a resumed run would train on other batches and end with other
    metrics. ``last.ckpt`` from the last finished epoch is a point the run restores exactly; the
    interrupted epoch is trained again, as the uninterrupted run trained it.
    """

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        if not isinstance(exception, (SIGTERMException, KeyboardInterrupt)) or trainer.state.fn != "fit":
            return
        if not trainer.is_global_zero:
            return
        last = self.run_dir / CHECKPOINTS / LAST
        where = f"interrupted in epoch {trainer.current_epoch} (step {trainer.global_step})"
        if last.is_file():
            print(f"{where}; {last} holds the end of the last finished epoch, and resuming repeats the interrupted "
                  f"one exactly\nresume with: {resume_command(self.run_dir)}",
                  file=sys.stderr, flush=True)
        else:
            print(f"{where}, before any epoch finished: there is nothing to resume; start the run again",
                  file=sys.stderr, flush=True)


def merge_adapters(trainer, module, strategy, path: Path, run_dir: Path, rewrite: bool = True) -> None:
    """After fitting with adapters (LoRA, (IA)³): the module holds the checkpoint at ``path`` with its
    adapters merged, ``<run>/adapter/`` the adapter alone (peft's format), and ``path`` is rewritten
    with the merged weights, so ``tl-eval``, ``tl-fuse``, ``model.checkpoint=`` and exports read a plain
    backbone. ``last.ckpt`` keeps the unmerged state ``resume=`` needs (written to its own file, or a
    hard link that a rename here does not touch). A checkpoint merged already (a run stopped after
    this step and resumed) is only loaded. ``rewrite=False``: ``path`` is left as it is (``last.ckpt``,
    when no best checkpoint was chosen)."""
    from transferlab.runs import ADAPTER

    ckpt = read_checkpoint(path)
    state = ckpt["state_dict"]
    trainer.strategy.barrier("merge_adapters: read")  # every rank reads the unmerged file before rank 0 rewrites it
    prefix = "model.backbone."
    if not any(strategy.is_adapter(k[len(prefix):]) for k in state if k.startswith(prefix)):
        strategy.merge(module.model)
        module.load_state_dict(state)
        return
    module.load_state_dict(state)
    if trainer.is_global_zero and rewrite:
        folder = run_dir / ADAPTER
        tmp = run_dir / f".{ADAPTER}.partial"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        strategy.save_adapter(module.model, tmp)
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(tmp, folder)
    strategy.merge(module.model)
    if trainer.is_global_zero and rewrite:
        ckpt["state_dict"] = {k: v.detach().cpu() for k, v in module.state_dict().items()}
        StreamingCheckpointIO().save_checkpoint(ckpt, path)
    trainer.strategy.barrier("merge_adapters: written")
