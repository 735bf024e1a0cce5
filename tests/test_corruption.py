"""data.corruption: deterministic ImageNet-C style shifts of real images (the bundled digits)."""
from __future__ import annotations

import numpy as np
import pytest
from helpers import compose

from transferlab.data import create_splits
from transferlab.data.corruptions import CORRUPTIONS
from transferlab.data.datamodule import Transformed
from transferlab.data.digits import Digits
from transferlab.data.features import feature_key
from transferlab.errors import ConfigError


def data_cfg(*overrides):
    return compose("data=digits", *overrides, run_dir="unused").data


def pixels(ds, idx=0) -> np.ndarray:
    return np.asarray(ds[idx][0], dtype=np.int16)


def distance(a, b) -> float:
    return float(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)).mean())


@pytest.fixture(scope="module")
def digits():
    return Digits()


def test_corrupted_digits_differ_from_clean_and_are_the_same_on_every_read(digits):
    noisy = digits.corrupted(("gaussian_noise", 3, 0))
    assert not np.array_equal(pixels(noisy), pixels(digits))
    assert np.array_equal(pixels(noisy), pixels(noisy))  # two reads
    assert np.array_equal(pixels(noisy), pixels(Digits().corrupted(("gaussian_noise", 3, 0))))  # another dataset
    # keyed by the item, not by its position in a view or the order of reads
    view = noisy.subset([5, 0])
    assert np.array_equal(pixels(view, 1), pixels(noisy, 0)) and np.array_equal(pixels(view, 0), pixels(noisy, 5))
    assert not np.array_equal(pixels(noisy, 0), pixels(digits.corrupted(("gaussian_noise", 3, 1)), 0))  # seed
    assert digits.corruption is None and np.array_equal(pixels(digits), np.asarray(digits.load(0)))  # clean stays clean


@pytest.mark.parametrize("name", CORRUPTIONS.names())
def test_every_corruption_changes_the_image_and_keeps_size_and_mode(digits, name):
    assert set(CORRUPTIONS.names()) >= {"gaussian_noise", "contrast", "invert", "blur", "pixelate"}
    clean = digits.load(3)
    for severity in range(1, 6):
        out = CORRUPTIONS.entry(name).cls(clean, severity, np.random.default_rng(0))
        assert out.mode == "RGB" and out.size == clean.size
        assert distance(out, clean) > 0, f"{name} severity {severity} left the image unchanged"


@pytest.mark.parametrize("name", CORRUPTIONS.names())
def test_higher_severity_moves_further_from_clean(digits, name):
    images = [digits.load(i) for i in range(20)]
    dist = [np.mean([distance(CORRUPTIONS.entry(name).cls(im, s, np.random.default_rng(i)), im)
                     for i, im in enumerate(images)]) for s in range(1, 6)]
    steps = np.diff(dist)
    if name == "pixelate":  # an 8 px image has few block sizes: severities 4 and 5 may coincide
        assert np.all(steps >= 0) and dist[-1] > dist[0], dist
    else:
        assert np.all(steps > 0), dist


def test_create_splits_corrupts_every_split_from_the_composed_config():
    clean = create_splits(data_cfg())
    shifted = create_splits(data_cfg("data.corruption.kind=contrast", "data.corruption.severity=5"))
    again = create_splits(data_cfg("data.corruption.kind=contrast", "data.corruption.severity=5"))
    for split in ("train", "val", "test"):
        assert np.array_equal(shifted[split].indices, clean[split].indices)  # same items and labels
        assert np.array_equal(shifted[split].labels("label"), clean[split].labels("label"))
        assert shifted[split].corruption == ("contrast", 5, 0)
        assert not np.array_equal(pixels(shifted[split]), pixels(clean[split]))
        assert np.array_equal(pixels(shifted[split]), pixels(again[split]))
        assert np.std(pixels(shifted[split])) < np.std(pixels(clean[split]))  # contrast really went down
    assert clean["test"].corruption is None


def test_corruption_survives_class_subsets_and_few_shot():
    splits = create_splits(data_cfg("data.classes=[5,6,7,8,9]", "data.train_per_class=5",
                                    "data.corruption.kind=invert"))
    assert len(splits["train"]) == 25 and all(s.corruption == ("invert", 3, 0) for s in splits.values())


def test_a_saved_config_without_severity_and_seed_uses_the_defaults():
    from omegaconf import OmegaConf

    cfg = data_cfg()
    OmegaConf.set_struct(cfg, False)
    cfg.corruption = {"kind": "blur"}  # e.g. an eval set's overrides naming only the corruption
    OmegaConf.set_struct(cfg, True)
    assert create_splits(cfg)["test"].corruption == ("blur", 3, 0)


def test_unknown_corruption_is_a_config_error_naming_the_value_and_the_valid_names():
    with pytest.raises(ConfigError) as e:
        create_splits(data_cfg("data.corruption.kind=gausian_noise"))
    message = str(e.value)
    assert "data.corruption.kind=gausian_noise" in message
    assert all(name in message for name in CORRUPTIONS.names())


@pytest.mark.parametrize("severity", ["0", "6", "2.5", "strong"])
def test_severity_outside_1_to_5_is_a_config_error(severity):
    with pytest.raises(ConfigError, match=rf"data\.corruption\.severity='?{severity}'? .*1 \(mild\) to 5 \(strong\)"):
        create_splits(data_cfg("data.corruption.kind=blur", f"data.corruption.severity={severity}"))


def test_negative_seed_is_a_config_error():
    with pytest.raises(ConfigError, match=r"data\.corruption\.seed=-1"):
        create_splits(data_cfg("data.corruption.kind=blur", "data.corruption.seed=-1"))


def test_fingerprint_and_feature_key_separate_clean_from_corrupted(digits):
    views = [digits, digits.corrupted(("contrast", 3, 0)), digits.corrupted(("contrast", 4, 0)),
             digits.corrupted(("contrast", 3, 1)), digits.corrupted(("blur", 3, 0))]
    prints = [v.fingerprint() for v in views]
    assert None not in prints and len(set(prints)) == len(prints)
    assert digits.corrupted(None).fingerprint() == digits.fingerprint()  # clean keys are unchanged
    assert Digits().corrupted(("contrast", 3, 0)).fingerprint() == prints[1]  # and stable across instances
    keys = {feature_key("backbone", Transformed(v, repr), "32-true") for v in views}
    assert len(keys) == len(views)  # cached clean features are never served for corrupted images
