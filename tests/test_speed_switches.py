"""Speed switches change how a run computes, not what it computes."""
from __future__ import annotations

import pytest
import torch
from conftest import train


@pytest.mark.parametrize("switch", ["model.channels_last=true", "model.grad_checkpointing=true",
                                    "trainer.accumulate_grad_batches=2"])
def test_speed_switches_train_and_keep_checkpoint_keys(tmp_path, switch):
    from transferlab.models import read_checkpoint

    metrics = train(tmp_path, "source=none", "trainer.max_epochs=2", switch)
    assert 0 <= metrics["test/acc"] <= 1
    keys = read_checkpoint(tmp_path / "checkpoints" / "last.ckpt")["state_dict"]
    assert any(k.startswith("model.backbone.conv1.") for k in keys)  # same names: transferable as ever
    assert not any("_orig_mod" in k for k in keys)


def test_channels_last_gives_the_same_loss_as_contiguous(tmp_path):
    torch.manual_seed(0)
    from conftest import compose

    from transferlab import run

    losses = []
    for flag in ("false", "true"):
        torch.manual_seed(0)
        module, datamodule, _ = run.build(compose("source=none", f"model.channels_last={flag}", run_dir=tmp_path))
        batch = next(iter(datamodule.val_dataloader()[0]))
        module.eval()
        losses.append(module._task_losses("data", *batch)[0]["main"].item())
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)
