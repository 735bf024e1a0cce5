"""Reliability, round 3 (issue 21), more of it: TensorBoard continued on resume (C3), a run whose best.ckpt
is gone is not fused (M5), tl-eval on other classes (M8), tl-reproduce without the cached source checkpoint
(M10), saved configs lacking a group that decides the result, a truncated metrics.json in a sweep's report,
tl-reproduce of a fusion folder, and the tokenizer and feature caches under a TRANSFERLAB_CACHE that is a file.

One module-scoped set of tiny real runs (no source run, 1 epoch, 5 shots per class): a scratch run and two
fine-tunings of its best.ckpt (seeds 1 and 2, so they can be averaged), and an ensemble of the two; tests
copy and damage them. Everything goes through the Python API and ``transferlab.cli.reproduce`` in this
process (the code path of the console scripts, without their start-up).
"""
from __future__ import annotations

import csv
import json
import os
import re
import shutil
import struct
from pathlib import Path

import pytest
import torch
import yaml
from helpers import FAST, FAST_SOURCE, Interrupt, runs_into

import transferlab
from transferlab.errors import CheckpointError, ConfigError
from transferlab.metrics import COMPARED

pytestmark = pytest.mark.usefixtures("one_torch_thread")

QUICK = ["source=none", "logger=csv", "trainer.max_epochs=1", "trainer.enable_progress_bar=false",
         "data.train_per_class=5"]
NO_WANDB = "logger.wandb=null"
RUN_FILES = ("config.yaml", "metrics.json", "candidates.csv", "checkpoints", "env.json")  # what a run leaves


def written(folder: Path) -> list[str]:
    """The files of a run that ``folder`` holds (a command's own log aside): [] when nothing was written."""
    return sorted(name for name in RUN_FILES if (folder / name).exists()) if folder.exists() else []


@pytest.fixture(scope="module")
def runs(tmp_path_factory, one_torch_thread):
    root = tmp_path_factory.mktemp("round3_more")
    train = runs_into(root, *QUICK)
    out = {"root": root}
    out["base"] = train("base", "strategy=scratch", "seed=1")
    source = out["base"] / "checkpoints" / "best.ckpt"
    out["ft1"] = train("ft1", "strategy=finetune", "seed=1", f"model.checkpoint={source}")
    out["ft2"] = train("ft2", "strategy=finetune", "seed=2", f"model.checkpoint={source}")
    return out


@pytest.fixture(scope="module")
def fused(runs) -> Path:
    """A finished fusion: an ensemble of the two fine-tunings."""
    out = runs["root"] / "fusions" / "ensemble"
    transferlab.fuse("method=ensemble", f"runs=[{runs['ft1']},{runs['ft2']}]", NO_WANDB, run_dir=out)
    assert (out / "metrics.json").is_file()
    return out


# --- C3: TensorBoard continues on resume -------------------------------------------------------------------

def scalars(folder: Path, tag: str) -> dict[int, float]:
    """``tag`` per step from every TensorBoard event file in ``folder`` (TFRecord: length, its CRC, the
    event, its CRC), read with the protobuf classes of whichever writer Lightning used."""
    try:
        from tensorboard.compat.proto.event_pb2 import Event
    except ImportError:
        from tensorboardX.proto.event_pb2 import Event
    found = {}
    for path in sorted(folder.glob("events.out.tfevents.*")):
        data, i = path.read_bytes(), 0
        while i + 12 <= len(data):
            (n,) = struct.unpack("<Q", data[i:i + 8])
            event = Event.FromString(data[i + 12:i + 12 + n])
            i += 16 + n
            for value in event.summary.value:
                if value.tag == tag:
                    simple = value.HasField("simple_value")
                    found[event.step] = value.simple_value if simple else value.tensor.float_val[0]
    return found


def test_resume_keeps_the_tensorboard_events_of_the_interrupted_run_and_adds_to_them(tmp_path):
    """As the CSV and W&B (test_resume_logs.py): TensorBoard's curve is whole after ``resume=``, the part
    written before the interruption unchanged, in the same folder (no version_1 beside it)."""
    run_dir = tmp_path / "run"
    no_source = [o for o in FAST if o != FAST_SOURCE]
    with pytest.raises(RuntimeError, match="interrupted by the test"):
        transferlab.train(*no_source, "source=none", "logger=tensorboard", "trainer.max_epochs=2", run_dir=run_dir,
                          callbacks=[Interrupt()])
    folder = run_dir / "tensorboard"
    before = {p.name: p.read_bytes() for p in folder.glob("events.out.tfevents.*")}
    first = scalars(folder, "val/acc")
    assert before and len(first) == 1  # epoch 0's validation

    result = transferlab.train(f"resume={run_dir}", "trainer.enable_progress_bar=false")
    assert result.metrics["epochs"] == 2
    for name, content in before.items():  # kept, and at most appended to
        assert (folder / name).read_bytes()[:len(content)] == content, name
    assert {p.parent for p in run_dir.rglob("events.out.tfevents.*")} == {folder}
    after = scalars(folder, "val/acc")
    assert len(after) == 2, after  # both epochs: the interrupted one's and the resumed one's
    (step, value), = first.items()
    assert after[step] == value and max(after) > step


# --- M5: a run whose best.ckpt is gone is not fused from last.ckpt ------------------------------------------

@pytest.mark.parametrize("method", ["ensemble", "wise_ft"])
def test_fusing_a_run_whose_best_checkpoint_is_gone_is_refused_not_done_with_last_ckpt(runs, tmp_path, method):
    damaged = tmp_path / "ft2"
    shutil.copytree(runs["ft2"], damaged)
    (damaged / "checkpoints" / "best.ckpt").unlink()
    assert (damaged / "checkpoints" / "last.ckpt").is_file()  # what a silent fallback would take
    out = tmp_path / "fused"
    with pytest.raises(ConfigError) as e:
        transferlab.fuse(f"method={method}", f"runs=[{runs['ft1']},{damaged}]", NO_WANDB, run_dir=out)
    message = str(e.value)
    assert str(damaged / "checkpoints" / "best.ckpt") in message and "another model" in message, message
    assert written(out) == []  # no metrics.json, no config.yaml, no fused checkpoint


# --- M8: tl-eval on other classes -------------------------------------------------------------------------

def test_evaluating_a_checkpoint_on_its_own_classes_gives_its_test_metrics(runs, tmp_path):
    """The control for the refusals below: naming the checkpoint's own classes is not refused."""
    ckpt = runs["ft1"] / "checkpoints" / "best.ckpt"
    result = transferlab.evaluate(ckpt, "data=digits_fewshot", "data.classes=[5,6,7,8,9]", run_dir=tmp_path / "eval")
    trained = json.loads((runs["ft1"] / "metrics.json").read_text())
    assert result.metrics["test/acc"] == pytest.approx(trained["test/acc"], abs=1e-6)


@pytest.mark.parametrize("classes", ["[9,8,7,6,5]", "[0,1,2,3,4]"], ids=["same_names_other_order", "other_names"])
def test_evaluating_a_checkpoint_on_other_classes_is_refused_naming_both_lists(runs, tmp_path, classes):
    ckpt = runs["ft1"] / "checkpoints" / "best.ckpt"
    out = tmp_path / "eval"
    with pytest.raises(ConfigError) as e:
        transferlab.evaluate(ckpt, "data=digits_fewshot", f"data.classes={classes}", run_dir=out)
    message = str(e.value)
    given = [str(c) for c in yaml.safe_load(classes)]
    assert str(given) in message and str(["5", "6", "7", "8", "9"]) in message and str(ckpt) in message, message
    assert written(out) == []


# --- M10: tl-reproduce without the source checkpoint ------------------------------------------------------

SOURCE = ['data=digits', 'data.classes=[0,1,2,3,4]', 'source=none', 'strategy=finetune', 'logger=csv',
          'trainer.max_epochs=1', 'trainer.enable_progress_bar=false', 'data.train_per_class=20']


def test_reproduce_trains_a_deleted_source_run_again_from_its_recorded_overrides_and_matches(tmp_path):
    """The cached source run's best.ckpt (the run's model.checkpoint) is gone: tl-reproduce trains the
    source again from source.overrides as the run recorded them, into the same cache entry, and the run
    reproduces exactly (CPU)."""
    from transferlab.cli.reproduce import reproduce

    overrides = "source.overrides=[" + ",".join(f"'{o}'" for o in SOURCE) + "]"
    with_source = [o for o in QUICK if o != "source=none"]
    run = transferlab.train(*with_source, overrides, f"source.cache_dir={tmp_path / 'sources'}",
                            run_dir=tmp_path / "run").run_dir
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["source"]["overrides"] == SOURCE
    source_ckpt = Path(config["model"]["checkpoint"])
    assert source_ckpt.is_relative_to(tmp_path / "sources") and source_ckpt.is_file()
    source_metrics = json.loads((source_ckpt.parents[1] / "metrics.json").read_text())
    source_ckpt.unlink()

    old, new, tolerance, out = reproduce(run, tmp_path / "again", True, None)
    assert tolerance == 0.0
    assert {k: new[k] for k in COMPARED} == {k: old[k] for k in COMPARED}  # exactly
    assert source_ckpt.is_file()  # trained again where the run's config names it
    again = json.loads((source_ckpt.parents[1] / "metrics.json").read_text())
    assert {k: again[k] for k in COMPARED} == {k: source_metrics[k] for k in COMPARED}  # the same source model
    assert yaml.safe_load((out / "config.yaml").read_text())["model"]["checkpoint"] == str(source_ckpt)


def test_reproduce_of_a_run_whose_given_checkpoint_is_gone_is_an_error_naming_it(runs, tmp_path):
    """No source run to train again (source.overrides is empty): the missing model.checkpoint is named,
    not replaced by a random initialisation."""
    from transferlab.cli.reproduce import reproduce

    run = tmp_path / "ft"
    shutil.copytree(runs["ft1"], run)
    gone = tmp_path / "weights" / "source.ckpt"
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["source"]["overrides"] == []
    config["model"]["checkpoint"] = str(gone)
    (run / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    with pytest.raises((ConfigError, CheckpointError)) as e:
        reproduce(run, tmp_path / "again", True, None)
    message = str(e.value)
    assert str(gone) in message and "model.checkpoint" in message, message
    assert written(tmp_path / "again") == []


# --- a saved config without a group that decides the result ---------------------------------------------

def older(run: Path, dest: Path, key: str) -> Path:
    """A copy of ``run`` as an older or edited version left it: ``key`` gone from config.yaml and from the
    config inside its checkpoints."""
    shutil.copytree(run, dest)
    config = yaml.safe_load((dest / "config.yaml").read_text())
    del config[key]
    (dest / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    for path in (dest / "checkpoints").glob("*.ckpt"):
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        del ckpt["hyper_parameters"]["config"][key]
        torch.save(ckpt, path)
    return dest


@pytest.mark.parametrize("key", ["model", "data", "strategy"])
def test_tl_eval_of_a_checkpoint_whose_config_lacks_a_deciding_group_is_an_error_naming_it(runs, tmp_path, key):
    old = older(runs["ft1"], tmp_path / "old", key)
    out = tmp_path / "eval"
    with pytest.raises(ConfigError) as e:  # not a KeyError traceback
        transferlab.evaluate(old / "checkpoints" / "best.ckpt", run_dir=out)
    assert f"has no '{key}'" in str(e.value), str(e.value)
    assert written(out) == []


@pytest.mark.parametrize("key", ["model", "data", "strategy"])
def test_tl_fuse_of_a_run_whose_config_lacks_a_deciding_group_is_an_error_naming_it(runs, tmp_path, key):
    """The run lacking the group is the first of the two (its checkpoint's config is not the one the fused
    model is rebuilt from), so only a check of the run itself can notice."""
    old = older(runs["ft2"], tmp_path / "old", key)
    out = tmp_path / "fused"
    with pytest.raises(ConfigError) as e:
        transferlab.fuse("method=ensemble", f"runs=[{old},{runs['ft1']}]", NO_WANDB, run_dir=out)
    message = str(e.value)
    assert re.search(rf"has no '?{key}'?", message) and str(old) in message, message
    assert written(out) == []


# --- a truncated metrics.json in a sweep's report -----------------------------------------------------------

def report_csv(sweep: Path) -> list[dict]:
    with open(sweep / "report.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_a_truncated_metrics_json_in_a_sweep_is_listed_as_damaged_and_kept_out_of_every_row(runs, tmp_path):
    sweep = tmp_path / "sweep"
    for i, name in enumerate(("ft1", "ft2")):  # one setting, seeds 1 and 2
        shutil.copytree(runs[name], sweep / str(i))
    assert [sorted(row.seeds) for row in transferlab.report(sweep).rows] == [[1, 2]]  # both, while readable

    metrics = sweep / "1" / "metrics.json"
    text = metrics.read_text()
    metrics.write_text(text[:len(text) // 2])  # cut in the middle, as by a full disk
    report = transferlab.report(sweep)
    status = {r.dir.name: r.status for r in report.runs}
    assert status == {"0": "finished", "1": "damaged"}
    (damaged,) = [r for r in report.runs if r.dir.name == "1"]
    assert str(metrics.resolve()) in damaged.error and "not readable JSON" in damaged.error, damaged.error
    assert [[r.dir.name for r in row.runs] for row in report.rows] == [["0"]]

    md = report.markdown
    assert "1 finished" in md and "1 damaged" in md and "0 incomplete" in md, md
    assert "still running" not in md and "## Failed and incomplete runs" not in md
    section = md.split("## Damaged runs")[1]
    assert f"`{(sweep / '1').resolve()}`" in section and "is not readable JSON" in section
    rows = report_csv(sweep)
    assert [(r["kind"], r["seeds"], r["n_seeds"]) for r in rows if r["kind"] == "row"] == [("row", "1", "1")]
    (listed,) = [r for r in rows if r["kind"] == "run" and r["run_dir"] == str((sweep / "1").resolve())]
    assert listed["status"] == "damaged" and listed["test/acc"] == "" and "not readable JSON" in listed["error"]


# --- tl-reproduce of a fusion folder ------------------------------------------------------------------------

def test_reproduce_of_a_fusion_folder_says_it_is_not_a_training_run_and_writes_nothing(fused, tmp_path, capsys):
    from transferlab.cli.reproduce import main, reproduce

    beside = sorted(os.listdir(fused.parent))
    files = {p: p.read_bytes() for p in fused.rglob("*") if p.is_file()}
    with pytest.raises(ConfigError) as e:
        reproduce(fused, None, True, None)  # the default new folder would go beside it
    message = str(e.value)
    assert "is not a training run" in message and str(fused) in message, message
    with pytest.raises(SystemExit) as exit_:  # as tl-reproduce prints it
        main([str(fused), "--out", str(tmp_path / "again"), "--allow-version-change"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "error: " in err and "is not a training run" in err and "Traceback" not in err
    assert not (tmp_path / "again").exists()
    assert sorted(os.listdir(fused.parent)) == beside
    assert {p: p.read_bytes() for p in fused.rglob("*") if p.is_file()} == files


# --- caches under a TRANSFERLAB_CACHE that is a file ------------------------------------------------------

TEXT = ["model=tiny_bert", "data=synthetic_text", "data.num_samples=40", "tasks.main.column=topic", "source=none",
        "logger=csv", "trainer.max_epochs=1", "trainer.enable_progress_bar=false",
        "model.tokenizer.train_on=['data=synthetic_text','data.domain=source','data.num_samples=200']"]


@pytest.fixture
def cache_is_a_file(tmp_path, monkeypatch) -> Path:
    afile = tmp_path / "afile"
    afile.write_text("not a folder")
    monkeypatch.setenv("TRANSFERLAB_CACHE", str(afile))
    return afile


def test_a_tokenizer_cache_under_a_transferlab_cache_that_is_a_file_is_a_clear_error(tmp_path, cache_is_a_file):
    """As for the source run (test_reliability_round3.py): the tokenizer to train goes to
    ${paths.cache_dir}/tokenizers, under TRANSFERLAB_CACHE; the message names it, not a NotADirectoryError."""
    run_dir = tmp_path / "run"
    with pytest.raises(ConfigError) as e:
        transferlab.train(*TEXT, run_dir=run_dir)
    message = str(e.value)
    assert "TRANSFERLAB_CACHE" in message and str(cache_is_a_file) in message and "is a file" in message, message
    assert cache_is_a_file.read_text() == "not a folder"
    assert written(run_dir) == []


def test_a_feature_cache_under_a_transferlab_cache_that_is_a_file_leaves_features_with_the_run(
        tmp_path, cache_is_a_file, caplog):
    """The shared feature cache is optional (data/features.py): a warning naming the folder, and the run
    ends exactly as one without a shared cache."""
    probe = [*QUICK, "strategy=linear_probe", "data.augment.enabled=false"]  # features are cached
    with caplog.at_level("WARNING", logger="transferlab.data.features"):
        cached = transferlab.train(*probe, run_dir=tmp_path / "run").metrics
    assert any("cannot write to the feature cache" in r.getMessage() and str(cache_is_a_file / "features")
               in r.getMessage() for r in caplog.records), [r.getMessage() for r in caplog.records]
    assert cache_is_a_file.read_text() == "not a folder"
    plain = transferlab.train(*probe, "paths.feature_cache=null", run_dir=tmp_path / "plain").metrics
    assert {k: cached[k] for k in COMPARED} == {k: plain[k] for k in COMPARED}
