"""Checkpoints: last.ckpt is always the latest epoch, best.ckpt the best one, and no write, failed or
not, ever changes the content of the other file or leaves a partial one."""
from __future__ import annotations

import os

import pytest
import torch
from helpers import FAST, compose
from pytorch_lightning import Callback

from transferlab import run
from transferlab.plan import resolve

# A frozen backbone and a learning rate too small to change any prediction: val/acc is the same in
# every epoch, so only epoch 0 is the best and every later epoch writes last.ckpt on its own.
PLATEAU = ["source=none", "strategy=linear_probe", "optimizer.lr=1e-12", "trainer.max_epochs=3"]


def _epoch(path) -> int:
    return torch.load(path, map_location="cpu", weights_only=False)["epoch"]


class Watch(Callback):
    """After each epoch's checkpoints: what last.ckpt and best.ckpt hold and whether they are one file."""

    def __init__(self, folder):
        self.folder, self.seen = folder, []

    def _look(self, epoch):
        last, best = self.folder / "last.ckpt", self.folder / "best.ckpt"
        self.seen.append({"epoch": epoch, "last": _epoch(last), "best": _epoch(best),
                          "same_file": os.path.samefile(last, best)})

    # Checkpoint callbacks run last at the end of an epoch, so look at the start of the next one.
    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch > 0:
            self._look(trainer.current_epoch - 1)

    def on_train_end(self, trainer, pl_module):
        self._look(trainer.current_epoch - 1)


def test_last_checkpoint_is_every_epochs_and_shares_the_best_file_only_in_the_epoch_it_was_best(tmp_path):
    watch = Watch(tmp_path / "checkpoints")
    run.train(resolve(compose(*FAST, *PLATEAU, run_dir=tmp_path)), callbacks=[watch])
    assert watch.seen == [
        {"epoch": 0, "last": 0, "best": 0, "same_file": True},   # one write, linked
        {"epoch": 1, "last": 1, "best": 0, "same_file": False},  # written anew; best untouched
        {"epoch": 2, "last": 2, "best": 0, "same_file": False},
    ]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]


class FailToSave(Callback):
    """Makes the epoch-1 checkpoint unserialisable, like a full disk or a bad object would."""

    def on_save_checkpoint(self, trainer, pl_module, checkpoint):
        if trainer.current_epoch >= 1:
            checkpoint["not_picklable"] = lambda: None


def test_a_failed_checkpoint_write_leaves_the_previous_checkpoint_whole(tmp_path):
    with pytest.raises(Exception, match="pickle"):
        run.train(resolve(compose(*FAST, "source=none", run_dir=tmp_path)), callbacks=[FailToSave()])
    folder = tmp_path / "checkpoints"
    assert sorted(p.name for p in folder.iterdir()) == ["best.ckpt", "last.ckpt"]  # no temporary file left
    assert _epoch(folder / "last.ckpt") == 0
    assert not (tmp_path / "metrics.json").exists()
