"""Speed switches change how a run computes, not what it computes."""
from __future__ import annotations

import pytest
import torch
from helpers import FAST, compose, train

from transferlab.plan import resolve


@pytest.mark.parametrize("switch", ["model.channels_last=true", "model.grad_checkpointing=true",
                                    "trainer.accumulate_grad_batches=2"])
def test_speed_switches_train_and_keep_checkpoint_keys(tmp_path, switch):
    from transferlab.models.checkpoint import read_checkpoint

    metrics = train(tmp_path, "source=none", "trainer.max_epochs=2", switch)
    assert 0 <= metrics["test/acc"] <= 1
    keys = read_checkpoint(tmp_path / "checkpoints" / "last.ckpt")["state_dict"]
    assert any(k.startswith("model.backbone.conv1.") for k in keys)  # same names: transferable as ever
    assert not any("_orig_mod" in k for k in keys)


def test_channels_last_gives_the_same_loss_as_contiguous(tmp_path):
    torch.manual_seed(0)

    from transferlab import run

    losses = []
    for flag in ("false", "true"):
        torch.manual_seed(0)
        module, datamodule, *_ = run.build(resolve(compose("source=none", f"model.channels_last={flag}", run_dir=tmp_path)))
        batch = next(iter(datamodule.val_dataloader()[0]))
        module.eval()
        losses.append(module._task_losses("data", *batch)[0]["main"].item())
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)


def test_the_progress_bar_reads_the_loss_once_per_logging_interval_not_every_step(tmp_path, monkeypatch):
    """Reading a logged tensor for display is a device sync; at every step it would stall a GPU."""
    import pytorch_lightning as pl
    from pytorch_lightning import Callback

    reads = []  # every read of the bar's metrics, whichever bar (tqdm, rich) shows them
    original = pl.Trainer.progress_bar_metrics
    monkeypatch.setattr(pl.Trainer, "progress_bar_metrics",
                        property(lambda trainer: reads.append(1) or original.fget(trainer)))

    class Steps(Callback):
        """Reads so far at the start of each step: the bar reads at the end of a step, after this."""

        def __init__(self):
            self.reads_before = []

        def on_train_batch_start(self, trainer, *_):
            self.reads_before.append(len(reads))

    steps = Steps()

    from transferlab import run

    run.train(resolve(compose(*FAST, "source=none", "trainer.enable_progress_bar=true", "trainer.log_every_n_steps=5",
                      "data.batch_size=5", "trainer.max_epochs=1", run_dir=tmp_path)), callbacks=[steps])
    assert len(steps.reads_before) == 10
    assert steps.reads_before[-1] == 1  # of steps 1-9, only step 5 read the metrics
