"""Text runs (model=tiny_bert on synthetic_text) through the rest of tl-train, as a user runs them: an
Optuna search (real SQLite study) whose trials log to W&B (offline files read back), and a run stopped
by SIGTERM after its first epoch and resumed with ``tl-train resume=``.

The search runs ``tl-train``'s ``main()`` in this process (``helpers.cli``), the stopped run a process of its own
(a signal stops it), each with one intra-op thread; tokenizer from the session's cache.
"""
from __future__ import annotations

import json
import signal
from concurrent.futures import ThreadPoolExecutor

import pytest
import yaml
from helpers import ONE_THREAD, TEXT, by_state, cli, interrupt, study_trials, trial_dirs
from wandb_reader import metric, read_run

from transferlab.metrics import COMPARED
from transferlab.models.checkpoint import read_checkpoint

pytestmark = pytest.mark.slow  # each test starts tl-train (torch, transformers, Lightning) 1-3 times

TAGS = {"finetune", "tiny_bert", "synthetic_text"}
GROUP = "synthetic_text_finetune"  # experiment_name: the W&B group and the study's name


# ---------------------------------------------------------------------------------------------------
# Optuna search over a text run, each trial its own W&B run
# ---------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def search(tmp_path_factory):
    """``tl-train hparams_search=optuna`` over optimizer.lr: 2 random trials of one epoch, CSV and W&B."""
    out = tmp_path_factory.mktemp("text_optuna")
    result = cli("tl-train", *TEXT, "source=none", "trainer.max_epochs=1", "logger=many", "hparams_search=optuna",
                 "hydra.sweeper.n_trials=2", "hydra/sweeper/sampler=random", "optimizer.weight_decay=0.01",
                 f"paths.output_dir={out}", cwd=out, env=ONE_THREAD)
    assert result.returncode == 0, result.stderr[-3000:]
    (results_file,) = out.rglob("optimization_results.yaml")
    results = yaml.safe_load(results_file.read_text())
    return {"out": out, "sweep_dir": results_file.parent, "results": results, "stdout": result.stdout,
            "trials": study_trials(results["storage"], results["study_name"]), "dirs": trial_dirs(out)}


def test_optuna_search_over_a_text_run_completes_its_trials_in_the_sqlite_study(search):
    sweep_dir, results = search["sweep_dir"], search["results"]
    assert results["study_name"] == GROUP
    assert results["storage"] == f"sqlite:///{sweep_dir / 'optuna.db'}" and (sweep_dir / "optuna.db").is_file()
    trials = by_state(search["trials"])
    assert set(trials) == {"COMPLETE"} and len(trials["COMPLETE"]) == 2, trials
    assert sorted(search["dirs"]) == [t.number for t in search["trials"]]
    for t in trials["COMPLETE"]:
        (run_dir,) = search["dirs"][t.number]
        assert run_dir == sweep_dir / str(t.number)
        metrics = json.loads((run_dir / "metrics.json").read_text())
        config = yaml.safe_load((run_dir / "config.yaml").read_text())
        assert metrics["model"] == "tiny_bert" and metrics["data"] == "synthetic_text" and metrics["epochs"] == 1
        assert t.value == metrics["val/acc_best"]  # what the trial returned is metrics.json's objective
        assert 1e-4 <= t.params["optimizer.lr"] <= 3e-2 and set(t.params) == {"optimizer.lr"}  # wd fixed
        assert config["optimizer"]["lr"] == pytest.approx(t.params["optimizer.lr"], rel=1e-12)
        assert config["optimizer"]["weight_decay"] == 0.01
        assert len(t.intermediate_values) == 1  # the epoch's val/acc, reported for pruning
    assert len({t.params["optimizer.lr"] for t in trials["COMPLETE"]}) == 2
    best = max(trials["COMPLETE"], key=lambda t: t.value)
    assert results["best_value"] == best.value and results["best_params"] == best.params
    assert results["trials"] == {"complete": 2, "pruned": 0, "failed": 0, "lost": 0}


def test_text_search_report_lists_every_trial(search):
    import csv

    sweep_dir = search["sweep_dir"]
    md = (sweep_dir / "report.md").read_text()
    assert "2 finished, 0 failed" in md and f"## Optuna study `{GROUP}`" in md
    best = max(search["trials"], key=lambda t: t.value)
    assert f"Best val/acc_best = {best.value:.4f} (trial {best.number})" in md
    with open(sweep_dir / "report.csv", newline="") as f:
        runs = {r["run_dir"]: r for r in csv.DictReader(f) if r["kind"] == "run"}
    assert set(runs) == {str(d) for (d,) in search["dirs"].values()}
    for t in search["trials"]:  # one row per trial, labelled by its learning rate
        (run_dir,) = search["dirs"][t.number]
        row = runs[str(run_dir)]
        label = f"finetune, optimizer.lr={t.params['optimizer.lr']}"
        assert [ln for ln in md.splitlines() if ln.startswith("|") and label in ln], label
        assert row["status"] == "finished" and row["model"] == "tiny_bert" and row["data"] == "synthetic_text"
        assert float(row["test/acc"]) == json.loads((run_dir / "metrics.json").read_text())["test/acc"]
    assert md in search["stdout"]  # printed at the end of the search


def test_each_text_trial_is_a_wandb_run_named_like_an_image_run(search):
    """README/DESIGN's W&B conventions, on text: name <strategy>-<model>-<data>-s<seed>, group = the
    experiment (= the study), job_type = the strategy, tags strategy, model, data; summary = metrics.json."""
    ids = set()
    for t in search["trials"]:
        (run_dir,) = search["dirs"][t.number]
        wb = read_run(run_dir)
        metrics = json.loads((run_dir / "metrics.json").read_text())
        assert wb["file"].is_relative_to(run_dir) and wb["exited"] and wb["exit_code"] == 0
        run = wb["run"]
        assert run["name"] == "finetune-tiny_bert-synthetic_text-s42"
        assert run["project"] == "transferlab" and run["group"] == GROUP == wb["config"]["experiment_name"]
        assert run["job_type"] == "finetune" and TAGS <= set(run["tags"])
        assert wb["config"]["model"]["name"] == "tiny_bert" and wb["config"]["data"]["label"] == "synthetic_text"
        assert wb["config"]["optimizer"]["lr"] == pytest.approx(t.params["optimizer.lr"], rel=1e-12)  # its own trial
        for key in ("test/acc", "test/f1", "val/acc_best"):
            assert wb["summary"][key] == pytest.approx(metrics[key], abs=1e-12), key
        assert len(metric(wb["history"], "val/acc")) == 1 and len(metric(wb["history"], "test/acc")) == 1
        ids.add(run["id"])
    assert len(ids) == 2
    summary = read_run(search["sweep_dir"])  # the report's own run, in the sweep directory
    assert summary["run"]["job_type"] == "report" and summary["run"]["group"] == GROUP
    assert summary["summary"]["report/finished_runs"] == 2


# ---------------------------------------------------------------------------------------------------
# Resume: SIGTERM after the first finished epoch, then `tl-train resume=`
# ---------------------------------------------------------------------------------------------------

# 400 sentences (about 240 for training) in batches of 8: about 30 steps an epoch, so a signal shortly
# after the first last.ckpt lands inside the second epoch. Augmentation on: its words are drawn from
# torch's RNG, which the resumed run must restore for the same batches.
RESUME = [*TEXT, "source=none", "trainer.max_epochs=3", "data.num_samples=400", "data.batch_size=8",
          "data.augment.enabled=true"]
SAME = (*COMPARED, "test/loss", "epochs")


def test_text_run_stopped_by_sigterm_and_resumed_ends_with_the_uninterrupted_runs_metrics(tmp_path):
    full_dir, stopped_dir = tmp_path / "uninterrupted", tmp_path / "stopped"
    with ThreadPoolExecutor(max_workers=2) as pool:
        full = pool.submit(cli, "tl-train", *RESUME, f"hydra.run.dir={full_dir}", cwd=tmp_path, env=ONE_THREAD)
        code, stderr, epoch = pool.submit(interrupt, stopped_dir, signal.SIGTERM, tmp_path, RESUME, 0.2).result()
        assert full.result().returncode == 0, full.result().stderr[-3000:]
    assert code == 143 and "resume with: tl-train resume=" in stderr, stderr[-2000:]
    assert not (stopped_dir / "metrics.json").exists()
    last = read_checkpoint(stopped_dir / "checkpoints" / "last.ckpt")
    assert epoch <= last["epoch"] < 2, "the signal came after training ended; nothing would be resumed"
    steps_per_epoch = read_checkpoint(full_dir / "checkpoints" / "last.ckpt")["global_step"] // 3
    assert steps_per_epoch >= 20 and last["global_step"] == (last["epoch"] + 1) * steps_per_epoch  # an epoch's end

    resumed = cli("tl-train", f"resume={stopped_dir}", cwd=tmp_path, env=ONE_THREAD)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    full_metrics, metrics = (json.loads((d / "metrics.json").read_text()) for d in (full_dir, stopped_dir))
    assert metrics["model"] == "tiny_bert" and metrics["epochs"] == 3
    for key in SAME:  # exact: same cache (tokenizer), one thread, CPU
        assert metrics[key] == full_metrics[key], (key, metrics[key], full_metrics[key])
