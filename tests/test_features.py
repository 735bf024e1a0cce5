"""Cached backbone features for linear probing: same result as running the backbone every epoch."""
from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import FAST, compose, train
from pytorch_lightning import Callback

from transferlab.plan import resolve

PROBE = ["strategy=linear_probe", "data.augment.enabled=false", "trainer.max_epochs=4"]


def test_cached_and_uncached_linear_probe_agree(tmp_path):
    plain = train(tmp_path / "plain", *PROBE, "strategy.cache_features=false")
    cached = train(tmp_path / "cached", *PROBE)  # null: caches because augmentation is off
    for key in ("test/acc", "test/f1", "val/acc_best"):
        assert cached[key] == pytest.approx(plain[key], abs=0.005), key


def test_features_are_not_cached_when_the_backbone_trains_or_augmentation_runs(tmp_path):
    from transferlab import run

    for overrides, expected in ((["strategy=linear_probe"], False),  # augmentation on, not forced
                                (["strategy=linear_probe", "strategy.cache_features=true"], True),
                                (["strategy=lp_ft", "strategy.lp_epochs=1", "data.augment.enabled=false", "strategy.cache_features=true"], False),
                                (["strategy=partial", "strategy.freeze_stages=5", "data.augment.enabled=false"], True)):
        module, datamodule, *_ = run.build(resolve(compose(*FAST, "source=none", *overrides, run_dir=tmp_path)))
        assert (datamodule.features_from is not None) is expected


# --- the feature cache shared across runs ------------------------------------------------------

class BackboneCalls(Callback):
    """Counts the backbone's forward passes during one run (extraction included)."""

    calls = 0

    def setup(self, trainer, pl_module, stage):
        if stage == "fit":
            self.handle = pl_module.model.backbone.register_forward_hook(self._count)

    def _count(self, *_):
        self.calls += 1

    def teardown(self, trainer, pl_module, stage):
        if stage == "fit":
            self.handle.remove()


def _probe(run_dir, feature_cache, *overrides, callbacks=()):
    from transferlab import run

    run.train(resolve(compose(*FAST, *PROBE, f"paths.feature_cache={feature_cache}", *overrides, run_dir=run_dir)),
              callbacks=list(callbacks))
    return json.loads((run_dir / "metrics.json").read_text())


def test_later_runs_on_the_same_backbone_and_data_read_features_from_the_shared_cache(tmp_path):
    cache = tmp_path / "features"
    first = BackboneCalls()
    _probe(tmp_path / "seed1", cache, "seed=1", callbacks=[first])
    entries = sorted(p.name for p in cache.iterdir())
    assert first.calls > 0 and len(entries) == 3  # train, val and test features, no temporary leftovers

    # Another seed of the same source backbone: the head differs, the features do not.
    later = BackboneCalls()
    reused = _probe(tmp_path / "seed2", cache, "seed=2", callbacks=[later])
    assert later.calls == 0, "the backbone ran although its features were in the cache"
    assert sorted(p.name for p in cache.iterdir()) == entries
    fresh = _probe(tmp_path / "seed2_uncached", cache, "seed=2", "strategy.cache_features=false")
    for key in ("test/acc", "test/f1", "val/acc_best"):
        assert reused[key] == pytest.approx(fresh[key], abs=0.005), key


def test_a_damaged_cache_entry_is_extracted_again(tmp_path):
    cache = tmp_path / "features"
    first = _probe(tmp_path / "first", cache)
    for entry in cache.iterdir():
        (entry / "features.npy").write_bytes(b"\x93NUMPY not really")
    calls = BackboneCalls()
    again = _probe(tmp_path / "again", cache, callbacks=[calls])
    assert calls.calls > 0
    assert again["test/acc"] == pytest.approx(first["test/acc"], abs=0.005)
    assert all(np.load(entry / "features.npy").ndim == 2 for entry in cache.iterdir())  # replaced, readable


def test_feature_key_changes_with_the_weights_the_transform_and_the_images(tmp_path):
    import torch

    from transferlab import run
    from transferlab.data.features import backbone_digest, feature_key

    def key_of(*overrides, split="train", tweak=None):
        cfg = compose(*FAST, "source=none", *PROBE, *overrides, run_dir=tmp_path)
        torch.manual_seed(cfg.seed)  # random initial weights, as tl-train seeds them
        _, datamodule, *_ = run.build(resolve(cfg))
        backbone = datamodule.features_from
        if tweak:
            with torch.no_grad():
                next(backbone.parameters()).view(-1)[0] += 1e-3
        return feature_key(backbone_digest(backbone), datamodule.datasets[("data", split)], "32-true")

    base = key_of()
    assert key_of() == base  # same random init (seed), same data: same key
    assert key_of(tweak=True) != base
    assert key_of("data.input_size=48") != base
    assert key_of(split="val") != base
    assert key_of("data.train_per_class=5") != base
    assert key_of("seed=2") != base  # another random initialisation


def test_an_edited_image_file_changes_the_fingerprint(tmp_path):
    from PIL import Image

    from transferlab.data.image_folder import scan

    for c in ("cat", "dog"):
        (tmp_path / c).mkdir()
        for i in range(2):
            Image.new("RGB", (8, 8), (40 * i, 0, 0)).save(tmp_path / c / f"{i}.png")
    before = scan(tmp_path).fingerprint()
    assert scan(tmp_path).fingerprint() == before
    Image.new("RGB", (9, 9), (255, 255, 255)).save(tmp_path / "dog" / "1.png")
    assert scan(tmp_path).fingerprint() != before


def test_an_unwritable_feature_cache_leaves_features_with_the_run(tmp_path, caplog):
    blocked = tmp_path / "not_a_folder"
    blocked.write_text("a file where the cache folder should be")
    with caplog.at_level("WARNING", logger="transferlab.data.features"):
        metrics = _probe(tmp_path / "run", blocked)
    assert 0 <= metrics["test/acc"] <= 1
    assert blocked.read_text().startswith("a file")
    assert any("cannot write to the feature cache" in r.getMessage() and str(blocked) in r.getMessage()
               for r in caplog.records)


def test_a_full_disk_under_the_feature_cache_leaves_features_with_the_run(tmp_path, caplog):
    """The shared cache is optional: when publishing fails midway (ENOSPC on a real, tiny filesystem),
    the run keeps the features it extracted and ends as an uncached run does; no half entry is left."""
    import subprocess

    full = tmp_path / "full"
    full.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8k", "tmpfs", str(full)], capture_output=True).returncode:
        pytest.skip("cannot mount a small filesystem here (needs root)")
    try:
        with caplog.at_level("WARNING", logger="transferlab.data.features"):
            metrics = _probe(tmp_path / "run", full)
        leftovers = sorted(p.name for p in full.iterdir())
    finally:
        subprocess.run(["umount", str(full)], check=True)
    plain = _probe(tmp_path / "plain", "null")
    assert metrics["test/acc"] == pytest.approx(plain["test/acc"], abs=0.005)
    assert any("cannot write to the feature cache" in r.getMessage() and str(full) in r.getMessage()
               for r in caplog.records)  # numpy's short write: "... requested and ... written"
    assert leftovers == []
