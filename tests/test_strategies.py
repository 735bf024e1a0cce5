"""Transfer strategies, judged by what the parameters did during real training runs."""
from __future__ import annotations

import pytest
import torch
from helpers import FAST, StageWatcher, backbone_state, compose, source_checkpoint, train

from transferlab.models.checkpoint import read_checkpoint
from transferlab.plan import resolve


def test_linear_probe_keeps_every_backbone_tensor_and_bn_buffer_bit_identical(tmp_path):
    metrics = train(tmp_path, "strategy=linear_probe")
    source = backbone_state(source_checkpoint(tmp_path))
    for ckpt in ("last.ckpt", "best.ckpt"):
        after = backbone_state(tmp_path / "checkpoints" / ckpt)
        assert after.keys() == source.keys()
        assert any("running_mean" in k for k in after), "BatchNorm buffers must be part of the comparison"
        changed = [k for k in source if not torch.equal(source[k], after[k])]
        assert changed == [], f"{ckpt}: backbone tensors changed under linear_probe: {changed[:5]}"
    head = read_checkpoint(tmp_path / "checkpoints" / "last.ckpt")["state_dict"]["model.heads.main.1.weight"]
    assert metrics["trainable_params"] == head.numel() + head.shape[0]  # head weight + bias only
    assert metrics["test/acc"] > 0.4  # the probe learned something on 5 classes


def test_partial_freezes_exactly_the_first_stages(tmp_path):
    watcher = StageWatcher()
    from transferlab import run

    run.train(resolve(compose(*FAST, "strategy=partial", "strategy.freeze_stages=2", run_dir=tmp_path)), callbacks=[watcher])
    assert watcher.changed == [{2, 3, 4}] * 3
    source, after = backbone_state(source_checkpoint(tmp_path)), backbone_state(tmp_path / "checkpoints" / "last.ckpt")
    frozen_prefixes = ("conv1.", "bn1.", "layer1.")  # stem and first residual stage of a timm ResNet
    assert all(torch.equal(source[k], after[k]) for k in source if k.startswith(frozen_prefixes))
    assert not all(torch.equal(source[k], after[k]) for k in source if k.startswith("layer2."))


def test_gradual_unfreezes_one_stage_from_the_top_per_milestone(tmp_path):
    from transferlab import run

    watcher = StageWatcher()
    run.train(resolve(compose(*FAST, "strategy=gradual", "strategy.milestones=[1,2]", run_dir=tmp_path)), callbacks=[watcher])
    assert watcher.changed == [set(), {4}, {3, 4}]


def test_lp_ft_switches_from_probing_to_finetuning_at_lp_epochs(tmp_path):
    from transferlab import run

    watcher = StageWatcher()
    run.train(resolve(compose(*FAST, "strategy=lp_ft", "strategy.lp_epochs=2", run_dir=tmp_path)), callbacks=[watcher])
    assert watcher.changed == [set(), set(), {0, 1, 2, 3, 4}]


def test_bn_frozen_policy_keeps_running_statistics_while_weights_train(tmp_path):
    train(tmp_path, "strategy=finetune", "strategy.bn=frozen")
    source, after = backbone_state(source_checkpoint(tmp_path)), backbone_state(tmp_path / "checkpoints" / "last.ckpt")
    stats = [k for k in source if k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    assert stats and all(torch.equal(source[k], after[k]) for k in stats)
    convs = [k for k in source if k.endswith("conv1.weight")]
    assert any(not torch.equal(source[k], after[k]) for k in convs)


@pytest.mark.parametrize("override, message", [
    ("strategy.freeze_stages=9", "freeze_stages=9"),
    ("strategy.bn=sometimes", "bn='sometimes'"),
])
def test_bad_strategy_settings_fail_before_training(tmp_path, override, message):
    from transferlab.errors import ConfigError

    strategy = "strategy=partial" if "freeze" in override else "strategy=finetune"
    with pytest.raises(ConfigError, match=message):
        train(tmp_path, strategy, override)
    assert not (tmp_path / "metrics.json").exists()
