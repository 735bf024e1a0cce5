"""Cached backbone features for linear probing: same result as running the backbone every epoch."""
from __future__ import annotations

import pytest
from conftest import train

PROBE = ["strategy=linear_probe", "data.augment.enabled=false", "trainer.max_epochs=4"]


def test_cached_and_uncached_linear_probe_agree(tmp_path):
    plain = train(tmp_path / "plain", *PROBE, "strategy.cache_features=false")
    cached = train(tmp_path / "cached", *PROBE)  # null: caches because augmentation is off
    for key in ("test/acc", "test/f1", "val/acc_best"):
        assert cached[key] == pytest.approx(plain[key], abs=0.005), key


def test_features_are_not_cached_when_the_backbone_trains_or_augmentation_runs(tmp_path):
    from conftest import FAST, compose

    from transferlab import run

    for overrides, expected in ((["strategy=linear_probe"], False),  # augmentation on, not forced
                                (["strategy=linear_probe", "strategy.cache_features=true"], True),
                                (["strategy=lp_ft", "strategy.lp_epochs=1", "data.augment.enabled=false", "strategy.cache_features=true"], False),
                                (["strategy=partial", "strategy.freeze_stages=5", "data.augment.enabled=false"], True)):
        module, datamodule, _ = run.build(compose(*FAST, "source=none", *overrides, run_dir=tmp_path))
        assert module.inputs_are_features is expected, overrides
        assert (datamodule.features_from is not None) is expected
