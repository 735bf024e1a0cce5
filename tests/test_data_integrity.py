"""Data that used to crash a run or damage it silently (issue 14, items 8 and 10), on real files.

* No training batch holds one image (BatchNorm cannot normalise it): per stream, per rank, on cached
  features and in the BatchNorm re-estimation of fused weights, while every image still trains once
  per epoch.
* Duplicate ``data.classes``, 16-bit greyscale, EXIF orientation, a class without training images,
  and malformed CSV manifests: each decoded correctly or refused with one ``error:`` paragraph.
"""
from __future__ import annotations

import csv
import json
import logging
import os

import numpy as np
import pytest
from helpers import BIN, ONE_THREAD, clean_env, cli, compose, free_port, launch
from PIL import Image
from torch.utils.data import DistributedSampler

from transferlab import plan as planning
from transferlab import run
from transferlab.data import batch_size, create_splits
from transferlab.errors import ConfigError, DataError

T = ["source=none", "logger=csv", "trainer.max_epochs=1", "trainer.enable_progress_bar=false"]
FIFTHS = ["data.val_fraction=0.2", "data.test_fraction=0.2"]  # 5 images per class: 3 train, 1 val, 1 test
FILES = ["model=tiny", "data.input_size=32", "data.num_workers=0", "data.batch_size=8"]  # for data the test writes


def data_cfg(*overrides):
    return compose(*overrides, run_dir="unused").data


def build(tmp_path, *overrides):
    return run.build(planning.resolve(compose(*T, *overrides, run_dir=tmp_path / "run")))


def loader_batches(loader) -> list[list[int]]:
    return [list(b) for b in loader.batch_sampler]


def assert_every_image_once_and_no_batch_of_one(batches, images: int):
    assert min(map(len, batches)) >= 2, [len(b) for b in batches]
    assert sorted(i for b in batches for i in b) == list(range(images))


# --- item 8: a last training batch of one image ---------------------------------------------------

def test_the_default_experiment_trains_when_the_last_batch_would_hold_one_image(tmp_path):
    """25 few-shot images in batches of 4: 4+4+4+4+4+5, the last image joins the sixth batch (was a seventh)."""
    result = cli("tl-train", *T, "data.batch_size=4", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path,
                 env=ONE_THREAD)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["test/acc"] >= 0
    import torch

    last = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert last["global_step"] == 6


@pytest.mark.parametrize("size", [4, 8, 12, 24])
def test_training_batches_keep_every_image_and_never_hold_one(tmp_path, size):
    datamodule = build(tmp_path, f"data.batch_size={size}").datamodule
    (train,) = datamodule.train_dataloader().iterables.values()
    batches = loader_batches(train)
    assert len(train) == len(batches) == 25 // size
    assert_every_image_once_and_no_batch_of_one(batches, 25)
    # Fused weights re-estimate BatchNorm statistics on the training images in order: same rule, no shuffle.
    plain = loader_batches(datamodule.plain_loader("data", "train"))
    assert min(map(len, plain)) >= 2 and [i for b in plain for i in b] == list(range(25))
    # Evaluation sees every image, in order, a last batch of one included.
    val = loader_batches(datamodule.val_dataloader()[0])
    assert sorted(i for b in val for i in b) == list(range(sum(map(len, val))))


def test_each_ddp_rank_merges_its_own_lone_last_image(tmp_path):
    """Lightning re-creates the batch sampler around its DistributedSampler: 25 images on 2 ranks are
    13 each (one padded), batches of 4 then 4+4+5 on both ranks, the same count everywhere."""
    from pytorch_lightning.trainer.states import RunningStage
    from pytorch_lightning.utilities.data import _update_dataloader

    (train,) = build(tmp_path, "data.batch_size=4").datamodule.train_dataloader().iterables.values()
    ranks = []
    for rank in range(2):
        sharded = _update_dataloader(train, DistributedSampler(train.dataset, num_replicas=2, rank=rank, seed=0),
                                     RunningStage.TRAINING)
        ranks.append(loader_batches(sharded))
        assert len(sharded) == 3 and [len(b) for b in ranks[-1]] == [4, 4, 5]
    assert {i for batches in ranks for b in batches for i in b} == set(range(25))


def test_cached_features_and_cycling_tasks_never_train_on_one_image(tmp_path):
    """A linear probe on cached features (a head's BatchNorm would see them), and a second task of 5
    images that cycles while the 25 of the main task make the epoch, batches of 4 each."""
    datamodule = build(tmp_path, "data.batch_size=4", "strategy=linear_probe", "data.augment.enabled=false",
                       "paths.feature_cache=null",
                       "+tasks.few={column: label, num_classes: 5, data: {train_per_class: 1}}",
                       ).datamodule
    seen = {"data": 0, "data:few": 0}
    for batch, _, _ in datamodule.train_dataloader():
        for stream, (inputs, _) in batch.items():
            assert set(inputs) == {"features"}
            assert batch_size(inputs) >= 2
            seen[stream] += batch_size(inputs)
    assert seen["data"] == 25 and seen["data:few"] % 5 == 0


def test_a_batch_size_of_one_is_refused_only_where_batchnorm_would_train_on_it(tmp_path):
    """No merging helps batches of one: refused up front, naming the value and the ways on, where a
    BatchNorm layer trains; a frozen backbone (or frozen BatchNorm) takes them."""

    with pytest.raises(ConfigError, match=r"data.batch_size=1 hands the BatchNorm layers .* strategy.bn=frozen"):
        build(tmp_path / "finetune", "data.batch_size=1")
    for ok in (["strategy=linear_probe"], ["strategy.bn=frozen"]):
        build(tmp_path / ok[0], "data.batch_size=1", *ok)


@pytest.mark.slow
def test_ddp_trains_with_a_lone_last_image_per_rank_and_refuses_one_image_per_rank(tmp_path):
    """Two CPU processes as a user starts them: 25 images are 13 per rank, batches of 4 then 4+4+5;
    2 images are 1 per rank, a batch of one that no merging avoids: refused before the first step."""
    ddp = [BIN / "tl-train", *T, "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2"]
    ((rc, output),) = launch([([*ddp, "data.batch_size=4", f"hydra.run.dir={tmp_path / 'run'}"],
                               clean_env(MASTER_PORT=str(free_port())))], tmp_path)
    assert rc == 0, output[-3000:]
    assert (tmp_path / "run" / "metrics.json").is_file()
    tiny = [*ddp, "data.classes=[5,6]", "data.train_per_class=1", f"hydra.run.dir={tmp_path / 'tiny'}"]
    ((rc, output),) = launch([(tiny, clean_env(MASTER_PORT=str(free_port())))], tmp_path)
    assert rc != 0
    assert "error: the train split of data 'digits5-9_1shot' holds 2 item(s) for 2 device(s)" in output
    assert not (tmp_path / "tiny" / "metrics.json").exists()


# --- item 10: silent data damage ------------------------------------------------------------------

def test_duplicate_classes_are_refused_before_anything_trains(tmp_path):
    result = cli("tl-train", *T, "data.classes=[5,6,6]", f"paths.output_dir={tmp_path}", cwd=tmp_path)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "error: data.classes=[5, 6, 6]" in result.stderr and "distinct" in result.stderr
    assert not list(tmp_path.rglob("metrics.json"))
    # data built from its config alone (a task's own data, an evaluation set) is checked by the same settings
    with pytest.raises(ConfigError, match=r"data.classes=\[5, 6, 6\] is not valid: .*distinct"):
        create_splits(data_cfg("data=digits", "data.classes=[5,6,6]"))


def test_16_bit_greyscale_is_scaled_not_clipped(tmp_path):
    ramp = (np.arange(32 * 32).reshape(32, 32) * 64).astype(np.uint16)  # 0 .. 65472, all of the 16-bit range
    for c in ("a", "b"):
        (tmp_path / c).mkdir()
        for i in range(5):
            Image.fromarray(ramp).save(tmp_path / c / f"{i}.png")
    assert Image.open(tmp_path / "a" / "0.png").mode == "I;16"
    image, _ = create_splits(data_cfg("data=image_folder", f"data.root={tmp_path}", *FIFTHS))["train"][0]
    pixels = np.asarray(image, dtype=np.float64)
    assert image.mode == "RGB" and pixels.shape == (32, 32, 3)
    np.testing.assert_allclose(pixels[..., 0], ramp / 257.0, atol=0.51)  # rounding to 8 bits only
    assert (pixels == 255).mean() < 0.01  # was 99.6 %: every value above 255 clipped to white


def test_a_float_image_is_refused_by_name_not_clipped_to_black(tmp_path):
    """A 32-bit float TIFF in [0, 1] became an all-black (0/1 of 255) picture; its range is the writer's
    convention, so the file is named and refused rather than guessed."""
    for c in ("a", "b"):
        (tmp_path / c).mkdir()
        for i in range(5):
            Image.fromarray(np.full((32, 32), 0.5, dtype=np.float32)).save(tmp_path / c / f"{i}.tif")
    assert Image.open(tmp_path / "a" / "0.tif").mode == "F"
    train = create_splits(data_cfg("data=image_folder", f"data.root={tmp_path}", *FIFTHS))["train"]
    with pytest.raises(DataError, match=r"cannot read image .*\.tif.*PIL mode F.*16-bit"):
        train[0]


def write_oriented(path, pixels, orientation: int):
    image = Image.fromarray(pixels)
    exif = image.getexif()
    exif[0x0112] = orientation  # EXIF Orientation
    image.save(path, exif=exif)


def test_exif_orientation_is_applied(tmp_path):
    pixels = np.random.default_rng(0).integers(0, 255, (10, 20, 3), dtype=np.uint8)  # stored 20 wide, 10 high
    for c in ("a", "b"):
        (tmp_path / c).mkdir()
        for i in range(5):
            write_oriented(tmp_path / c / f"{i}.png", pixels, 6)  # 6: display rotated 90 degrees clockwise
    image, _ = create_splits(data_cfg("data=image_folder", f"data.root={tmp_path}", *FIFTHS))["train"][0]
    assert np.array_equal(np.asarray(image), np.rot90(pixels, k=-1))


def test_the_feature_cache_key_changes_when_an_image_is_turned_in_place(tmp_path):
    """``exiftool -P`` style: same size, modification time put back; the image a run sees has changed."""
    pixels = np.random.default_rng(0).integers(0, 255, (10, 20, 3), dtype=np.uint8)
    for c in ("a", "b"):
        (tmp_path / c).mkdir()
        for i in range(5):
            write_oriented(tmp_path / c / f"{i}.png", pixels, 1)
    cfg = data_cfg("data=image_folder", f"data.root={tmp_path}", *FIFTHS)
    before = create_splits(cfg)["train"].fingerprint()
    target = tmp_path / "a" / "0.png"
    size, mtime = target.stat().st_size, target.stat().st_mtime_ns
    write_oriented(target, pixels, 6)
    os.utime(target, ns=(mtime, mtime))
    assert target.stat().st_size == size and target.stat().st_mtime_ns == mtime
    assert create_splits(cfg)["train"].fingerprint() != before


def write_pngs(folder, n: int):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(folder / f"{i}.png")


def write_manifest(path, rows, header=("path", "label", "split"), encoding="utf-8"):
    with open(path, "w", newline="", encoding=encoding) as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def test_a_csv_split_whose_train_lacks_a_class_is_refused(tmp_path):
    write_pngs(tmp_path / "img", 12)
    rows = [[f"img/{i}.png", ["red", "green"][i % 2], ["train", "val", "test"][i % 3]] for i in range(9)]
    rows += [[f"img/{i}.png", "blue", ["val", "test", "test"][i % 3]] for i in range(9, 12)]
    write_manifest(tmp_path / "labels.csv", rows)
    result = cli("tl-train", *T, *FILES, "data=csv", f"data.manifest={tmp_path / 'labels.csv'}",
                 f"paths.output_dir={tmp_path / 'out'}", cwd=tmp_path)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "error: class(es) 'blue' of label column 'label' have no images in the train split" in result.stderr
    assert not list(tmp_path.rglob("metrics.json"))


def csv_splits(tmp_path, rows, **kw):
    write_pngs(tmp_path / "img", 12)
    write_manifest(tmp_path / "labels.csv", rows, **kw)
    return create_splits(data_cfg("data=csv", f"data.manifest={tmp_path / 'labels.csv'}"))


GOOD = [[f"img/{i}.png", ["red", "green", "blue"][i % 3], ["train", "train", "val", "test"][i % 4]]
        for i in range(12)]


def test_a_csv_manifest_with_a_byte_order_mark_reads_like_one_without(tmp_path):
    splits = csv_splits(tmp_path, GOOD, encoding="utf-8-sig")  # what Excel's "CSV UTF-8" writes
    assert splits["train"].classes == {"label": ["blue", "green", "red"]}
    assert [len(splits[s]) for s in ("train", "val", "test")] == [6, 3, 3]


@pytest.mark.parametrize("rows, kw, message", [
    pytest.param([*GOOD[:5], ["img/5.png", "", "train"], *GOOD[6:]], {},
                 r"has 1 empty cell\(s\): line 7 column 'label'; fill them", id="empty-label"),
    pytest.param([*GOOD[:5], ["img/5.png", "green"], *GOOD[6:]], {},
                 r"empty cell\(s\): line 7 column 'split'", id="short-row"),
    pytest.param([*GOOD[:5], ["img/5.png", "green", "train", "x"], *GOOD[6:]], {},
                 r"more cells than header columns on line\(s\) 7; quote values", id="long-row"),
    pytest.param([*GOOD, ["img/3.png", "red", "train"]], {},
                 r"lists image '.*img/3.png' on lines 5 and 14 with different label, split",
                 id="conflicting-duplicate"),
    pytest.param([*GOOD[:11], ["img/11.png", "caf\u00e9", "test"]], {"encoding": "latin-1"},
                 r"is not UTF-8 text \(byte 0xe9 on line 13\); save it as UTF-8", id="latin-1"),
])
def test_malformed_csv_manifests_are_clear_errors(tmp_path, rows, kw, message):
    with pytest.raises(DataError, match=message):
        csv_splits(tmp_path, rows, **kw)


def test_a_row_repeated_exactly_is_used_once_with_a_warning(tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        splits = csv_splits(tmp_path, [*GOOD, GOOD[0], GOOD[0]])
    assert sum(map(len, splits.values())) == 12
    assert "repeats 2 row(s) exactly (line(s) 14, 15); each image is used once" in caplog.text
