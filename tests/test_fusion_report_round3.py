"""Fusion and report (round 3): selection by a metric's direction, the shared-initialisation check by
content, report rows that keep fusions of other data apart, and bad fusion / training settings refused
by name.

One module-scoped set of tiny real runs (no source run, 1 epoch, 5 shots per class): two scratch runs
(seeds 1, 2) and fine-tunings of the first one's checkpoint, reached by a relative path and (twice)
through a byte-identical copy elsewhere; fusions through the Python API (the path tl-fuse takes).
"""
from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path

import pytest
import yaml
from helpers import runs_into

import transferlab
from transferlab.errors import ConfigError

pytestmark = pytest.mark.usefixtures("one_torch_thread")

QUICK = ["source=none", "logger=csv", "trainer.max_epochs=1", "trainer.enable_progress_bar=false",
         "data.train_per_class=5"]
NO_WANDB = "logger.wandb=null"


def candidates(out_dir: Path) -> list[dict]:
    with open(out_dir / "candidates.csv") as f:
        return list(csv.DictReader(f))


def config_of(run_dir: Path) -> dict:
    return yaml.safe_load((run_dir / "config.yaml").read_text())


@pytest.fixture(scope="module")
def runs(tmp_path_factory, one_torch_thread):
    root = tmp_path_factory.mktemp("round3_fusion_runs")
    train = runs_into(root, *QUICK)
    out = {"root": root}
    out["scratch1"] = train("scratch1", "strategy=scratch", "seed=1")
    out["scratch2"] = train("scratch2", "strategy=scratch", "seed=2")
    source = out["scratch1"] / "checkpoints" / "best.ckpt"
    copy = root / "elsewhere" / "source_copy.ckpt"
    copy.parent.mkdir()
    shutil.copyfile(source, copy)
    here = os.getcwd()
    os.chdir(root)  # the source spelt relative to the folder the command runs in
    try:
        out["ft_rel"] = train("ft_rel", "strategy=finetune", "seed=1", "model.checkpoint=scratch1/checkpoints/best.ckpt")
    finally:
        os.chdir(here)
    out["ft_copy"] = train("ft_copy", "strategy=finetune", "seed=2", f"model.checkpoint={copy}")
    # one more of the same source spelt the same way: the pair the selection tests fuse
    out["ft_copy3"] = train("ft_copy3", "strategy=finetune", "seed=3", f"model.checkpoint={copy}")
    out["source"], out["copy"] = source, copy
    return out


@pytest.fixture(scope="module")
def wise_by_loss(runs, tmp_path_factory):
    out = tmp_path_factory.mktemp("wise_by_loss") / "fused"
    result = transferlab.fuse("method=wise_ft", f"runs=[{runs['ft_copy']},{runs['ft_copy3']}]",
                              "fusion.select_by=val/loss", NO_WANDB, run_dir=out)
    return {"dir": out, "metrics": result.metrics, "candidates": candidates(out)}


# --- M3: a loss is minimised, and val/acc_best stays an accuracy --------------------------------------------

def test_wise_ft_by_val_loss_keeps_the_alpha_with_the_lowest_validation_loss(wise_by_loss):
    rows, metrics = wise_by_loss["candidates"], wise_by_loss["metrics"]
    assert len(rows) == 11  # the default α grid
    losses = [float(r["val/loss"]) for r in rows]
    assert min(losses) < max(losses)  # otherwise either direction would pick the same α
    (chosen,) = [r for r in rows if r["chosen"] == "True"]
    lowest = min(range(len(rows)), key=lambda i: (losses[i], i))  # the first of equals
    assert chosen is rows[lowest], (float(chosen["alpha"]), losses)
    assert metrics["select_by"] == "val/loss"
    assert metrics["chosen"] == chosen["candidate"]
    assert metrics["alpha"] == pytest.approx(float(chosen["alpha"]))
    assert metrics["val/loss"] == pytest.approx(min(losses), rel=1e-9)
    assert metrics["test/acc"] == pytest.approx(float(chosen["test/acc"]), rel=1e-9)


def test_wise_ft_by_val_loss_records_the_chosen_accuracy_as_val_acc_best_not_a_loss(wise_by_loss):
    rows, metrics = wise_by_loss["candidates"], wise_by_loss["metrics"]
    (chosen,) = [r for r in rows if r["chosen"] == "True"]
    assert metrics["val/acc_best"] == pytest.approx(float(chosen["val/acc"]), rel=1e-9)
    assert metrics["val/acc_best"] == pytest.approx(metrics["val/acc"], rel=1e-9)
    assert 0.0 <= metrics["val/acc_best"] <= 1.0
    assert metrics["val/acc_best"] != pytest.approx(metrics["val/loss"])


def test_greedy_soup_by_val_loss_adds_runs_lowest_loss_first_and_keeps_what_lowers_it(runs, wise_by_loss, tmp_path):
    # α = 0 is ft_copy alone, α = 1 ft_copy3 alone: list the one of higher validation loss first, so that
    # ordering by the wrong direction would start from it
    ends = {float(r["alpha"]): float(r["val/loss"]) for r in wise_by_loss["candidates"]}
    assert ends[0.0] != ends[1.0]
    worse, better = ("ft_copy", "ft_copy3") if ends[0.0] > ends[1.0] else ("ft_copy3", "ft_copy")
    out = tmp_path / "soup"
    metrics = transferlab.fuse("method=greedy_soup", f"runs=[{runs[worse]},{runs[better]}]",
                               "fusion.select_by=val/loss", NO_WANDB, run_dir=out).metrics
    rows = candidates(out)
    alone = [r for r in rows if not r["candidate"].startswith("step")]
    steps = [r for r in rows if r["candidate"].startswith("step")]
    assert len(alone) == 2 and len(steps) == 2
    by_member = {Path(r["members"]).name: float(r["val/loss"]) for r in alone}
    assert by_member[better] < by_member[worse]
    assert Path(steps[0]["members"]).name == better and steps[0]["kept"] == "True"  # lowest loss first
    step1_loss, top = float(steps[1]["val/loss"]), by_member[better]
    assert steps[1]["kept"] == str(step1_loss <= top)  # kept only when the soup's loss does not rise
    (chosen,) = [r for r in rows if r["chosen"] == "True"]
    assert chosen is (steps[1] if step1_loss <= top else steps[0])
    assert metrics["chosen"] == chosen["candidate"] and metrics["ingredients"] == 2
    assert metrics["val/loss"] == pytest.approx(float(chosen["val/loss"]), rel=1e-9)
    assert metrics["val/loss"] <= min(by_member.values())  # never worse on validation than its best ingredient
    assert metrics["val/acc_best"] == pytest.approx(float(chosen["val/acc"]), rel=1e-9)
    assert 0.0 <= metrics["val/acc_best"] <= 1.0


# --- M4: the same initialisation is the same content, however its path was spelt -----------------------------

def test_runs_fine_tuned_from_one_source_spelt_differently_are_averaged(runs, tmp_path):
    spelt = [config_of(runs[n])["model"]["checkpoint"] for n in ("ft_rel", "ft_copy")]
    assert spelt[0] != spelt[1]  # two paths ...
    assert Path(runs["copy"]).read_bytes() == Path(runs["source"]).read_bytes()  # ... one content
    metrics = transferlab.fuse("method=uniform_soup", f"runs=[{runs['ft_rel']},{runs['ft_copy']}]", NO_WANDB,
                               run_dir=tmp_path / "uniform").metrics
    assert metrics["ingredients"] == 2 and metrics["fusion"] == "uniform_soup"
    assert (tmp_path / "uniform" / "checkpoints" / "fused.ckpt").is_file()
    assert (tmp_path / "uniform" / "metrics.json").is_file()


def test_a_saved_relative_source_path_is_the_same_initialisation_as_an_absolute_one(runs, tmp_path, monkeypatch):
    """A run saved as older versions saved it: its source relative to the folder it ran in (no cwd
    recorded), fused from that folder beside a run whose source is an absolute path to a copy."""
    old = tmp_path / "ft_saved_relative"
    shutil.copytree(runs["ft_rel"], old)
    config = config_of(old)
    config["model"]["checkpoint"] = "scratch1/checkpoints/best.ckpt"
    (old / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    env = json.loads((old / "env.json").read_text())
    env.pop("cwd", None)
    (old / "env.json").write_text(json.dumps(env))
    monkeypatch.chdir(runs["root"])
    metrics = transferlab.fuse("method=uniform_soup", f"runs=[{old},{runs['ft_copy']}]", NO_WANDB,
                               run_dir=tmp_path / "uniform").metrics
    assert metrics["ingredients"] == 2
    assert (tmp_path / "uniform" / "checkpoints" / "fused.ckpt").is_file()


def test_scratch_runs_of_different_seeds_are_not_averaged(runs, tmp_path):
    out = tmp_path / "uniform"
    with pytest.raises(ConfigError, match=r"initialisation differ.*seed 2.*seed 1") as info:
        transferlab.fuse("method=uniform_soup", f"runs=[{runs['scratch1']},{runs['scratch2']}]", NO_WANDB,
                         run_dir=out)
    assert str(runs["scratch2"]) in str(info.value)
    assert not (out / "metrics.json").exists() and not (out / "candidates.csv").exists()


def test_runs_fine_tuned_from_different_sources_are_not_averaged(runs, tmp_path):
    other = transferlab.train(*QUICK, "strategy=finetune", "seed=1",
                              f"model.checkpoint={runs['scratch2'] / 'checkpoints' / 'best.ckpt'}",
                              run_dir=tmp_path / "ft_other").run_dir
    out = tmp_path / "uniform"
    with pytest.raises(ConfigError, match="initialisation differ"):
        transferlab.fuse("method=uniform_soup", f"runs=[{runs['ft_rel']},{other}]", NO_WANDB, run_dir=out)
    assert not (out / "metrics.json").exists()


# --- M6: the report never averages fusions of other data into one row ----------------------------------------

@pytest.fixture(scope="module")
def ensembles(runs, tmp_path_factory):
    """Ensembles (same fusion settings, same seed) of runs on other data: 5 vs 8 shots per class."""
    root = tmp_path_factory.mktemp("round3_ensembles")
    eight = transferlab.train(*QUICK, "strategy=scratch", "seed=1", "data.train_per_class=8",
                              run_dir=root / "scratch1_8shot").run_dir
    fused = root / "fused"
    out = {}
    for name, run in (("ens_5shot", runs["scratch1"]), ("ens_8shot", eight)):
        out[name] = transferlab.fuse("method=ensemble", f"runs=[{run}]", NO_WANDB, run_dir=fused / name).metrics
    return {"dir": fused, "metrics": out}


def test_report_keeps_fusions_of_other_data_in_separate_rows(ensembles, tmp_path):
    m5, m8 = ensembles["metrics"]["ens_5shot"], ensembles["metrics"]["ens_8shot"]
    assert m5["data"] != m8["data"] and m5["seed"] == m8["seed"] == 1  # other data; the same seed
    report = transferlab.report(ensembles["dir"], out=tmp_path / "report")
    assert len(report.rows) == 2, [(r.label, [str(x.dir) for x in r.runs]) for r in report.rows]
    by_dir = {r.runs[0].dir.name: r for r in report.rows}
    assert sorted(by_dir) == ["ens_5shot", "ens_8shot"] and all(len(r.runs) == 1 for r in report.rows)
    assert len({r.label for r in report.rows}) == 2
    for name, metrics in ensembles["metrics"].items():
        assert by_dir[name].mean("test/acc") == pytest.approx(metrics["test/acc"], rel=1e-9)
    with open(tmp_path / "report" / "report.csv") as f:
        rows = [r for r in csv.DictReader(f) if r["kind"] == "row"]
    assert len(rows) == 2 and all(r["n_seeds"] == "1" for r in rows)
    assert sorted(r["data"] for r in rows) == sorted([m5["data"], m8["data"]])
    for r in rows:
        own = m5 if r["data"] == m5["data"] else m8
        assert float(r["test/acc"]) == pytest.approx(own["test/acc"], rel=1e-9)
        assert float(r["test/acc_std"]) == 0.0


def test_report_keeps_fusions_over_other_classes_of_one_dataset_in_separate_rows(tmp_path):
    fused = tmp_path / "fused"
    for name, classes in (("ens_012", "[0,1,2]"), ("ens_345", "[3,4,5]")):
        run = transferlab.train(*QUICK, "data=digits", f"data.classes={classes}", "strategy=scratch", "seed=1",
                                run_dir=tmp_path / name.replace("ens", "run")).run_dir
        transferlab.fuse("method=ensemble", f"runs=[{run}]", NO_WANDB, run_dir=fused / name)
    report = transferlab.report(fused, out=tmp_path / "report")
    assert len(report.rows) == 2, [(r.label, [x.dir.name for x in r.runs]) for r in report.rows]
    assert len({r.label for r in report.rows}) == 2, [r.label for r in report.rows]


# --- bad settings: refused by name, before any candidate is scored ------------------------------------------

def test_an_unknown_select_by_is_refused_naming_it_and_the_valid_ones(runs, tmp_path):
    out = tmp_path / "fused"
    with pytest.raises(ConfigError, match=r"fusion\.select_by=val/accuracy") as info:
        transferlab.fuse("method=wise_ft", f"runs=[{runs['ft_copy']},{runs['ft_copy3']}]",
                         "fusion.select_by=val/accuracy", NO_WANDB, run_dir=out)
    message = str(info.value)
    assert "valid:" in message and all(m in message for m in ("val/acc", "val/f1", "val/loss"))
    assert not (out / "candidates.csv").exists() and not (out / "metrics.json").exists()  # nothing scored
    # checked before any run is read: the same error where the runs do not even exist
    with pytest.raises(ConfigError, match=r"fusion\.select_by=val/accuracy"):
        transferlab.fuse("method=greedy_soup", f"runs=[{tmp_path / 'nowhere'}]", "fusion.select_by=val/accuracy",
                         NO_WANDB, run_dir=tmp_path / "fused2")


def test_a_scalar_alphas_is_refused_saying_it_must_be_a_list(runs, tmp_path):
    out = tmp_path / "fused"
    with pytest.raises(ConfigError, match=r"fusion\.alphas=0\.5 .*must be a .*list"):
        transferlab.fuse("method=wise_ft", f"runs=[{runs['ft_copy']},{runs['ft_copy3']}]", "fusion.alphas=0.5",
                         NO_WANDB, run_dir=out)
    assert not (out / "candidates.csv").exists() and not (out / "metrics.json").exists()


def test_runs_given_as_one_path_string_is_refused_suggesting_brackets(runs, tmp_path):
    out = tmp_path / "fused"
    with pytest.raises(ConfigError, match=r"not a list of run directories; write runs=\[") as info:
        transferlab.fuse("method=uniform_soup", f"runs={runs['ft_rel']}", NO_WANDB, run_dir=out)
    assert str(runs["ft_rel"]) in str(info.value)
    assert not (out / "metrics.json").exists()


def test_an_unknown_augment_setting_in_tl_train_is_refused_naming_it_and_the_valid_ones(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(ConfigError, match=r"data\.augment\.nonsense is not a setting") as info:
        transferlab.train(*QUICK, "+data.augment.nonsense=1", run_dir=out)
    message = str(info.value)
    assert all(k in message for k in ("enabled", "hflip", "rotation", "scale", "auto_augment"))
    assert not (out / "metrics.json").exists() and not (out / "checkpoints").exists()
