"""Target datasets built from real files the tests write, and the bundled digits."""
from __future__ import annotations

import csv

import numpy as np
import pytest
from helpers import cli, compose, train
from PIL import Image

from transferlab import run
from transferlab.data import create_splits
from transferlab.errors import ConfigError, DataError
from transferlab.plan import resolve

NO_SOURCE = ["model=tiny", "source=none", "data.input_size=32", "data.num_workers=0", "data.batch_size=8"]


def write_images(folder, classes=("cat", "dog", "owl"), per_class=6, size=24):
    rng = np.random.default_rng(0)
    for c in classes:
        (folder / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(folder / c / f"{i}.png")


def data_cfg(*overrides):
    return compose(*overrides, run_dir="unused").data


def test_digits_splits_are_stratified_disjoint_and_fixed_by_split_seed():
    cfg = data_cfg("data=digits")
    a, b = create_splits(cfg), create_splits(cfg)
    for split in ("train", "val", "test"):
        assert np.array_equal(a[split].indices, b[split].indices)
    all_idx = np.concatenate([a[s].indices for s in a])
    assert len(all_idx) == len(set(all_idx)) == 1797
    shares = np.bincount(a["val"].labels("label")) / np.bincount(a["train"].labels("label"))
    assert shares.min() > 0.3 and shares.max() < 0.4  # 20% val vs 60% train in every class


def test_class_subset_and_few_shot():
    splits = create_splits(data_cfg("data=digits", "data.classes=[5,6,7,8,9]", "data.train_per_class=10"))
    assert splits["train"].classes["label"] == ["5", "6", "7", "8", "9"]
    assert np.array_equal(np.bincount(splits["train"].labels("label")), [10] * 5)
    assert set(splits["test"].labels("label")) == {0, 1, 2, 3, 4}


def test_train_per_class_larger_than_available_is_a_clear_error():
    with pytest.raises(DataError, match=r"train_per_class=500 but class '\d' has only \d+"):
        create_splits(data_cfg("data=digits", "data.train_per_class=500"))


def test_image_folder_with_split_folders_and_with_fractions(tmp_path):
    for split, n in (("train", 6), ("val", 2), ("test", 3)):
        write_images(tmp_path / "a" / split, per_class=n)
    splits = create_splits(data_cfg("data=image_folder", f"data.root={tmp_path / 'a'}"))
    assert [len(splits[s]) for s in ("train", "val", "test")] == [18, 6, 9]
    write_images(tmp_path / "b", per_class=10)
    splits = create_splits(data_cfg("data=image_folder", f"data.root={tmp_path / 'b'}",
                                    "data.val_fraction=0.2", "data.test_fraction=0.2"))
    assert [len(splits[s]) for s in ("train", "val", "test")] == [18, 6, 6]
    image, labels = splits["train"][0]
    assert image.size == (24, 24) and labels["label"] in (0, 1, 2)


@pytest.mark.parametrize("layout, message", [
    ("missing", "does not exist"),
    ("empty", "has no class folders"),
    ("empty_class", "holds no images"),
])
def test_bad_image_folders(tmp_path, layout, message):
    root = tmp_path / "data"
    if layout != "missing":
        root.mkdir()
    if layout == "empty_class":
        write_images(root)
        (root / "emu").mkdir()
    with pytest.raises(DataError, match=message):
        create_splits(data_cfg("data=image_folder", f"data.root={root}"))


def test_csv_manifest_with_two_label_columns_and_a_split_column(tmp_path):
    write_images(tmp_path / "img", classes=("x",), per_class=12)
    with open(tmp_path / "labels.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "shape", "color", "split"])
        for i in range(12):
            w.writerow([f"img/x/{i}.png", ["round", "square"][i % 2], ["red", "green", "blue"][i % 3],
                        ["train", "train", "val", "test"][i % 4]])
    splits = create_splits(data_cfg("data=csv", f"data.manifest={tmp_path / 'labels.csv'}"))
    assert [len(splits[s]) for s in ("train", "val", "test")] == [6, 3, 3]
    assert splits["train"].classes == {"shape": ["round", "square"], "color": ["blue", "green", "red"]}


def test_wrong_class_count_and_missing_label_column_are_clear_errors():
    cfg = compose("tasks.main.num_classes=3", run_dir="unused")
    with pytest.raises(DataError, match="num_classes=3 but its data has 5 classes"):
        run.build(resolve(cfg))
    cfg = compose("data=synthetic", "tasks.main.column=texture", run_dir="unused")
    with pytest.raises((DataError, ConfigError), match="label column 'texture'.*shape, color, size"):
        run.build(resolve(cfg))


def test_corrupt_image_is_named_and_the_run_exits_nonzero_without_metrics(tmp_path):
    write_images(tmp_path / "data", per_class=8)
    bad = tmp_path / "data" / "dog" / "3.png"
    bad.write_bytes(b"this is not a png")
    out = tmp_path / "out"
    result = cli("tl-train", *NO_SOURCE, "data=image_folder", f"data.root={tmp_path / 'data'}", "data.num_workers=1",
                 "logger=csv", "trainer.max_epochs=1", "trainer.enable_progress_bar=false",
                 f"paths.output_dir={out}", cwd=tmp_path)
    assert result.returncode != 0
    assert str(bad) in result.stderr and "error:" in result.stderr
    assert not list(out.rglob("metrics.json"))


def test_synthetic_domains_share_labels_and_differ_in_pixels():
    src = create_splits(data_cfg("data=synthetic", "data.domain=source"))["train"]
    tgt = create_splits(data_cfg("data=synthetic", "data.domain=target", "data.shift=1.0"))["train"]
    assert src.classes == tgt.classes and set(src.targets) == {"shape", "color", "size"}
    mean = lambda ds: np.mean([np.asarray(ds[i][0], dtype=float).mean() for i in range(20)])  # noqa: E731
    assert mean(tgt) - mean(src) > 30  # the target background is much brighter


@pytest.mark.slow
def test_image_folder_run_end_to_end(tmp_path):
    write_images(tmp_path / "data", per_class=8)
    metrics = train(tmp_path / "run", *NO_SOURCE, "data=image_folder", f"data.root={tmp_path / 'data'}",
                    "logger=csv", "trainer.max_epochs=2", "trainer.enable_progress_bar=false", fast=False)
    assert 0 <= metrics["test/acc"] <= 1
