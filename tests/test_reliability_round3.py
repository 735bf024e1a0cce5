"""Reliability, round 3: text labels and texts that are not what they seem, a one-class task, a full disk
under a checkpoint, a source cache that is a file, read-only or moved, and feature-cache modes."""
from __future__ import annotations

import json
import os
import stat
import subprocess
import zipfile
from pathlib import Path

import pytest
import torch
from helpers import FAST, compose, train
from omegaconf import OmegaConf

from transferlab.errors import CheckpointError, ConfigError, DataError

TEXT_CFG = {"text_column": "text", "text_pair_column": None, "label_columns": None, "classes": None}


def _texts(path: Path, **cfg):
    from transferlab.data.text_files import labeled_texts, read_rows

    return labeled_texts(*read_rows(path), OmegaConf.create({**TEXT_CFG, **cfg}), str(path))


def _mount(*args) -> bool:
    return subprocess.run(["mount", *args], capture_output=True, check=False).returncode == 0


def _umount(path: Path) -> None:
    """Unmount, lazily when a failing write still holds a file open there (a traceback keeps it alive)."""
    if subprocess.run(["umount", str(path)], capture_output=True, check=False).returncode:
        subprocess.run(["umount", "-l", str(path)], check=True)


# --- 1. text labels: empty, null and NaN are refused; 1 and 1.0 are one class ----------------------------

@pytest.mark.parametrize("name, content, line, shown", [
    ("empty_cell.csv", "text,label\na good text,x\nanother text,\n", 3, "empty"),
    ("null.jsonl", '{"text": "a good text", "label": "x"}\n{"text": "another text", "label": null}\n', 2, "empty"),
    ("missing.jsonl", '{"text": "a good text", "label": "x"}\n{"text": "another text"}\n', 2, "empty"),
    ("nan.jsonl", '{"text": "a good text", "label": 1}\n{"text": "another text", "label": NaN}\n', 2, "NaN"),
])
def test_an_empty_null_or_nan_text_label_is_refused_naming_file_line_and_column(tmp_path, name, content, line, shown):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(DataError) as e:
        _texts(path)
    message = str(e.value)
    assert f"{path}: line {line}" in message and "column 'label'" in message and shown in message, message


@pytest.mark.parametrize("overrides, says", [
    (["data.max_length=1"], "data.max_length=1 is not valid: it must be an integer >= 3"),
    (["data.max_length=2"], "data.max_length=2 is not valid: it must be an integer >= 3"),
    (["data.text_pair_column=b", "data.max_length=4"], "data.max_length=4 leaves no token of a pair's texts"),
], ids=["1", "2", "pair_4"])
def test_a_max_length_that_leaves_no_text_token_is_refused(overrides, says):
    """M12: 1 disabled truncation, 2 made every input [CLS][SEP]: the smallest length is one that keeps a
    token of each text (3 for one text, 5 for a pair), and the largest is checked against the model."""
    from transferlab.data import KINDS

    base = ["model=tiny_bert", "data=text_files", "data.path=/data/texts.csv"]
    with pytest.raises(ConfigError) as e:
        KINDS.parse(compose(*base, *overrides).data, "data")
    assert says in str(e.value), str(e.value)
    assert KINDS.parse(compose(*base, "data.max_length=3").data, "data").max_length == 3
    assert KINDS.parse(compose(*base, "data.text_pair_column=b", "data.max_length=5").data, "data").max_length == 5


def test_integral_float_labels_are_the_class_of_the_integer(tmp_path):
    """pandas and `datasets` read a JSON column of 1, 1.0 and 2 as two classes; so does text_files."""
    path = tmp_path / "mixed.jsonl"
    path.write_text("".join(json.dumps({"text": f"text {i}", "label": v}) + "\n" for i, v in enumerate([1, 1.0, 2, 2.0])))
    texts = _texts(path)
    assert texts.classes == {"label": ["1", "2"]}
    assert list(texts.targets["label"]) == [0, 0, 1, 1]
    declared = _texts(path, classes=[1.0, 2])  # data.classes names them the same way
    assert declared.classes == {"label": ["1", "2"]} and list(declared.targets["label"]) == [0, 0, 1, 1]
    fractional = tmp_path / "fractional.jsonl"  # a fraction stays a class of its own
    fractional.write_text('{"text": "a", "label": 0.5}\n{"text": "b", "label": 1}\n')
    assert sorted(_texts(fractional).classes["label"]) == ["0.5", "1"]


# --- 2. a JSONL text that is a number is "not a string", not "empty" --------------------------------------

def test_a_jsonl_text_that_is_a_number_is_refused_as_not_a_string(tmp_path):
    path = tmp_path / "numbers.jsonl"
    path.write_text('{"text": "a good text", "label": "x"}\n{"text": 5, "label": "y"}\n')
    with pytest.raises(DataError) as e:
        _texts(path)
    message = str(e.value)
    assert f"{path}: line 2" in message and "not a string" in message and "int" in message, message
    assert "empty" not in message


# --- 3. a classification task of one class is refused before training -------------------------------------

def test_a_one_class_task_is_refused_naming_task_column_and_classes(tmp_path):
    with pytest.raises(DataError) as e:
        train(tmp_path / "run", "source=none", "data.classes=[5]", "trainer.max_epochs=1")
    message = str(e.value)
    assert "task 'main'" in message and "column 'label'" in message and "(5)" in message, message
    assert "at least 2 classes" in message
    assert not (tmp_path / "run" / "checkpoints").exists() or not any((tmp_path / "run" / "checkpoints").iterdir())


# --- 4. a full disk while saving a checkpoint ---------------------------------------------------------------

def test_a_full_disk_while_saving_a_checkpoint_is_a_clear_error_and_leaves_the_old_file(tmp_path):
    """ENOSPC on a real, tiny filesystem (as the feature cache's full-disk test): torch's own file writer
    reports it only as "unexpected pos"; the user must read "no space left on device" and the file."""
    from transferlab.checkpoints import StreamingCheckpointIO

    full = tmp_path / "full"
    full.mkdir()
    if not _mount("-t", "tmpfs", "-o", "size=64k", "tmpfs", str(full)):
        pytest.skip("cannot mount a small filesystem here (needs root)")
    try:
        io, path = StreamingCheckpointIO(), full / "checkpoints" / "last.ckpt"
        io.save_checkpoint({"w": torch.arange(10.0)}, path)
        with pytest.raises(CheckpointError) as e:
            io.save_checkpoint({"w": torch.zeros(200_000)}, path)  # 800 kB on 64 kB
        left = sorted(p.name for p in path.parent.iterdir())
        kept = torch.load(path, weights_only=True)
    finally:
        _umount(full)
    message = str(e.value)
    assert "no space left on device" in message and str(path) in message, message
    assert left == ["last.ckpt"]  # no temporary file, no partial checkpoint
    assert torch.equal(kept["w"], torch.arange(10.0))


# --- 5. a source cache that is a file or read-only ----------------------------------------------------------

def test_a_transferlab_cache_that_is_a_file_is_a_clear_error(tmp_path, monkeypatch):
    afile = tmp_path / "afile"
    afile.write_text("not a folder")
    monkeypatch.setenv("TRANSFERLAB_CACHE", str(afile))
    with pytest.raises(ConfigError) as e:
        train(tmp_path / "run", "trainer.max_epochs=1")  # FAST: a source run is wanted
    message = str(e.value)
    assert f"TRANSFERLAB_CACHE={afile}" in message and f"'{afile}' is a file" in message, message
    assert afile.read_text() == "not a folder"


def _source_step(tmp_path, cache: Path):
    from transferlab.plan import resolve

    plan = resolve(compose(*FAST, f"source.cache_dir={cache}", run_dir=tmp_path / "run"))
    return plan.source_run


def _refuse_training(plan):
    raise AssertionError("a cached source run was trained again")


@pytest.fixture
def read_only(tmp_path):
    """A folder and the same folder mounted read-only (even root cannot write there)."""
    writable, mounted = tmp_path / "cache", tmp_path / "read-only"
    writable.mkdir()
    mounted.mkdir()
    if not (_mount("--bind", str(writable), str(mounted)) and
            _mount("-o", "remount,bind,ro", str(mounted))):
        subprocess.run(["umount", str(mounted)], capture_output=True, check=False)
        pytest.skip("cannot mount a read-only folder here (needs root)")
    yield writable, mounted
    _umount(mounted)


def test_a_finished_source_run_in_a_read_only_cache_is_read_without_writing(tmp_path, read_only):
    writable, mounted = read_only
    step = _source_step(tmp_path, mounted / "sources")
    # a finished source run, as the cache holds it (what reuse reads: metrics.json and a zip checkpoint)
    folder = writable / "sources" / step.folder.name
    (folder / "checkpoints").mkdir(parents=True)
    (folder / "metrics.json").write_text("{}")
    with zipfile.ZipFile(folder / "checkpoints" / step.checkpoint.name, "w") as z:
        z.writestr("data.pkl", b"")
    assert step.done()
    step.perform(_refuse_training)  # no lock file, no folder: reading needs no write access
    assert sorted(p.name for p in folder.iterdir()) == ["checkpoints", "metrics.json"]


def test_a_source_run_missing_from_a_read_only_cache_is_a_clear_error(tmp_path, read_only):
    _, mounted = read_only
    step = _source_step(tmp_path, mounted / "sources")
    assert not step.done()
    with pytest.raises(ConfigError) as e:
        step.perform(_refuse_training)
    message = str(e.value)
    assert "TRANSFERLAB_CACHE" in message and str(step.folder) in message and "Read-only" in message, message


# --- 6. the source-cache key holds no cache location ----------------------------------------------------------

@pytest.mark.parametrize("overrides", [[], ["model=tiny_bert", "data=synthetic_text", "source=text_mlm",
                                            "tasks.main.column=topic"]], ids=["digits", "text_mlm"])
def test_a_moved_or_shared_cache_finds_the_same_source_run(tmp_path, monkeypatch, overrides):
    """The key is what the source learns, not where caches live: a cache moved (or mounted elsewhere,
    shared) keeps its source runs; what changes the source still changes the key."""
    from transferlab.config import compose_config
    from transferlab.source import source_config

    names = []
    for cache in (tmp_path / "a", tmp_path / "elsewhere" / "b"):
        monkeypatch.setenv("TRANSFERLAB_CACHE", str(cache))
        _, folder = source_config(compose_config(list(overrides)))
        assert folder.parent == cache / "sources"
        names.append(folder.name)
    assert names[0] == names[1]
    other = source_config(compose_config([*overrides, "model.drop_rate=0.5"]))[1].name
    assert other != names[0]


# --- 7. feature-cache entries follow the umask -------------------------------------------------------------------

class _Items(torch.utils.data.Dataset):
    """Six items with a fingerprint, as a ``Transformed`` view of files on disk offers."""

    transform = None

    class base:  # the attribute ``feature_key`` reads
        @staticmethod
        def fingerprint():
            return "six-items"

    def __len__(self):
        return 6

    def __getitem__(self, i):
        return {"x": torch.full((4,), float(i))}, {"label": torch.tensor(i % 2)}


def test_feature_cache_entries_follow_the_umask_so_a_group_can_share_them(tmp_path):
    from transferlab.data.features import cached_features

    backbone = torch.nn.Linear(4, 3)
    old = os.umask(0o002)
    try:
        cached_features(backbone, lambda inputs: backbone(inputs["x"]), _Items(), batch_size=4, num_workers=0,
                        cache_dir=tmp_path / "features")
    finally:
        os.umask(old)
    (entry,) = (tmp_path / "features").iterdir()
    assert stat.S_IMODE(entry.stat().st_mode) == 0o775
    for f in entry.iterdir():
        assert stat.S_IMODE(f.stat().st_mode) == 0o664, f.name
    hit = cached_features(backbone, lambda inputs: backbone(inputs["x"]), _Items(), batch_size=4, num_workers=0,
                          cache_dir=tmp_path / "features")
    assert len(hit) == 6


# --- 8. a damaged tokenizer file: a user's is named, a cached one is trained again ----------------------

TOKENIZED = ["model=tiny_bert", "data=synthetic_text", "data.num_samples=40", "tasks.main.column=topic",
             "source=none", "logger=csv"]


def test_a_damaged_tokenizer_path_is_an_error_naming_the_file(tmp_path):
    from transferlab import run
    from transferlab.plan import resolve

    bad = tmp_path / "tokenizer.json"
    bad.write_text('{"version": "1.0", "model": {"type": "WordPi')  # cut short, as by a full disk
    plan = resolve(compose(*TOKENIZED, "model.tokenizer.train_on=null", f"model.tokenizer.path={bad}",
                           run_dir=tmp_path / "run"))
    with pytest.raises(ConfigError, match=r"model.tokenizer.path=.*tokenizer.json.*is not a readable tokenizer.json"):
        run.build(plan)


def test_a_damaged_cached_tokenizer_is_trained_again(tmp_path):
    from transferlab import run
    from transferlab.models.hf import TrainTokenizer
    from transferlab.plan import resolve

    corpus = "model.tokenizer.train_on=['data=synthetic_text','data.domain=source','data.num_samples=200']"
    overrides = [*TOKENIZED, corpus, f"model.tokenizer.cache_dir={tmp_path / 'tokenizers'}"]
    run.prepare(resolve(compose(*overrides, run_dir=tmp_path / "a")))
    step = next(s for s in resolve(compose(*overrides, run_dir=tmp_path / "x")).model.steps()
                if isinstance(s, TrainTokenizer))
    whole = step.file.read_text()
    step.file.write_text(whole[: len(whole) // 2])  # a damaged cache entry
    plan = resolve(compose(*overrides, run_dir=tmp_path / "b"))
    assert any(isinstance(s, TrainTokenizer) and not s.done() for s in plan.steps)
    run.prepare(plan)
    assert json.loads(step.file.read_text()) == json.loads(whole)  # trained again, the same tokenizer
    run.build(plan)
