"""Sweeps as a user runs them: Hydra grids and Optuna searches through the real ``tl-train`` console
script, the SLURM launcher config, and the W&B sweep config in ``scripts/``.

Every sweep here writes under ``paths.output_dir=<tmp>`` and reads back what the jobs left behind:
run directories, ``failed.json``, the report the multirun callback writes, and W&B's offline files.
"""
from __future__ import annotations

import itertools
import json
import os
import re
import stat
import subprocess
from pathlib import Path

import pytest
import yaml
from helpers import BIN, FAST, ONE_THREAD, REPO, by_state, cli, compose, process, study_trials, trial_dirs
from wandb_reader import metric, read_run

from transferlab.plan import resolve

# Sweep jobs train with one intra-op thread: on 2 busy cores, 2 threads make these tiny runs
# 10x slower (measured 0.6 s vs 8 s of fit time) and change no number a test compares.
EPOCHS = 3  # trainer.max_epochs in helpers.FAST


def jobs(root: Path, keys=("optimizer.lr", "strategy")) -> dict[tuple, Path]:
    """Every job directory of the sweeps under ``root``, keyed by its overrides of ``keys`` (sorted)."""
    out = {}
    for overrides_file in root.rglob(".hydra/overrides.yaml"):
        job_dir = overrides_file.parent.parent
        if not (job_dir / ".hydra" / "hydra.yaml").is_file():
            continue
        overrides = yaml.safe_load(overrides_file.read_text())
        out[tuple(sorted(o for o in overrides if o.split("=", 1)[0] in keys))] = job_dir
    return out


def job_num(job_dir: Path) -> int:
    return yaml.safe_load((job_dir / ".hydra" / "hydra.yaml").read_text())["hydra"]["job"]["num"]


def hydra_compose(*overrides):
    """The full config (``hydra`` node included) that ``tl-train overrides`` starts from."""
    from hydra import compose as hydra_compose_
    from hydra import initialize_config_dir

    from transferlab import CONF_DIR

    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return hydra_compose_(config_name="train", overrides=list(overrides), return_hydra_config=True)


def commented_keys(path: Path) -> list[str]:
    """Keys of a YAML config file that have no ``# comment`` on their line."""
    missing = []
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        m = re.match(r"\s*(?:- )?([\w./@-]+)\s*:", line)
        if m and "#" not in line:
            missing.append(m.group(1))
    return missing


# ---------------------------------------------------------------------------------------------------
# Hydra grid: `tl-train -m optimizer.lr=1e-3,1e-2 strategy=finetune,linear_probe`
# ---------------------------------------------------------------------------------------------------

GRID = {"optimizer.lr": ("0.001", "0.01"), "strategy": ("finetune", "linear_probe")}


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    """The issue's example grid (4 jobs), logging to CSV and W&B (offline)."""
    out = tmp_path_factory.mktemp("grid")
    result = cli("tl-train", "-m", *FAST, "logger=many", "optimizer.lr=1e-3,1e-2", "strategy=finetune,linear_probe",
                 f"paths.output_dir={out}", cwd=out, env=ONE_THREAD)
    assert result.returncode == 0, result.stderr[-3000:]
    return out, jobs(out / "multirun"), result


def test_grid_runs_every_combination_as_its_own_job(grid):
    _, found, _ = grid
    expected = {tuple(sorted(f"{k}={v}" for k, v in zip(GRID, combo))) for combo in itertools.product(*GRID.values())}
    assert set(found) == expected
    assert sorted(job_num(d) for d in found.values()) == [0, 1, 2, 3]
    for overrides, job_dir in found.items():
        settings = dict(o.split("=", 1) for o in overrides)
        config = yaml.safe_load((job_dir / "config.yaml").read_text())
        metrics = json.loads((job_dir / "metrics.json").read_text())
        assert config["optimizer"]["lr"] == float(settings["optimizer.lr"])
        assert config["strategy"]["label"] == metrics["strategy"] == settings["strategy"]
        assert config["paths"]["run_dir"] == str(job_dir)
        assert metrics["epochs"] == EPOCHS and 0 <= metrics["test/acc"] <= 1
        assert (metrics["trainable_params"] < metrics["total_params"]) == (settings["strategy"] == "linear_probe")


def test_each_grid_job_is_its_own_wandb_run_with_group_and_job_type(grid):
    _, found, _ = grid
    runs = {}
    for overrides, job_dir in found.items():
        settings = dict(o.split("=", 1) for o in overrides)
        config = yaml.safe_load((job_dir / "config.yaml").read_text())
        wb = read_run(job_dir)
        assert wb["file"].is_relative_to(job_dir)  # the job's own directory
        assert wb["exited"] and wb["exit_code"] == 0
        assert wb["run"]["group"] == config["experiment_name"] and wb["run"]["group"]
        assert wb["run"]["job_type"] == settings["strategy"]
        assert wb["config"]["optimizer"]["lr"] == float(settings["optimizer.lr"])
        assert len(metric(wb["history"], "val/acc")) == EPOCHS  # nothing of another job leaked in
        assert len(metric(wb["history"], "test/acc")) == 1
        runs[wb["run"]["id"]] = job_dir
    assert len(runs) == 4


def test_grid_over_strategies_is_one_sweep_one_report_one_wandb_group(grid):
    out, found, _ = grid
    sweep_dirs = {d.parent for d in found.values()}
    groups = {read_run(d)["run"]["group"] for d in found.values()}
    reports = list((out / "multirun").rglob("report.md"))
    assert len(sweep_dirs) == 1, sweep_dirs
    assert len(groups) == 1, groups
    assert len(reports) == 1 and "4 finished, 0 failed" in reports[0].read_text()


# ---------------------------------------------------------------------------------------------------
# A failed job: recorded, reported, and the sweep goes on
# ---------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def failing_sweep(tmp_path_factory):
    """Three jobs; the middle one (lr=1e30) dies of a NaN loss in its first epoch, after its W&B run began."""
    out = tmp_path_factory.mktemp("failing")
    result = cli("tl-train", "-m", *FAST, "logger=many", "optimizer.lr=1e-3,1e30,1e-2", f"paths.output_dir={out}",
                 cwd=out, env=ONE_THREAD)
    found = {float(dict(o.split("=", 1) for o in k)["optimizer.lr"]): v for k, v in jobs(out / "multirun").items()}
    return out, found, result


def test_failed_job_is_recorded_and_the_sweep_goes_on(failing_sweep):
    _, found, result = failing_sweep
    assert result.returncode == 0, result.stderr[-3000:]
    assert set(found) == {1e-3, 1e30, 1e-2}
    failed = found[1e30]
    assert job_num(failed) == 1 and job_num(found[0.01]) == 2  # a job ran after the failed one
    assert not (failed / "metrics.json").exists()
    record = json.loads((failed / "failed.json").read_text())
    assert record["error"].startswith("TrainingError: loss became nan")
    assert record["strategy"] == "finetune" and record["seed"] == 42
    for lr in (1e-3, 1e-2):
        assert not (found[lr] / "failed.json").exists()
        assert json.loads((found[lr] / "metrics.json").read_text())["epochs"] == EPOCHS
    assert "job failed (loss became nan" in result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr


def test_failed_job_is_in_the_sweep_report(failing_sweep):
    _, found, result = failing_sweep
    sweep_dir = found[1e30].parent
    assert {d.parent for d in found.values()} == {sweep_dir}
    md = (sweep_dir / "report.md").read_text()
    assert "2 finished, 1 failed, 0 incomplete" in md
    failed_line = next(ln for ln in md.splitlines() if ln.startswith("| failed |"))
    assert str(found[1e30]) in failed_line and "loss became nan" in failed_line
    assert md in result.stdout  # printed at the end of the multirun
    import csv
    with open(sweep_dir / "report.csv", newline="") as f:
        runs = {r["run_dir"]: r for r in csv.DictReader(f) if r["kind"] == "run"}
    assert runs[str(found[1e30])]["status"] == "failed"
    assert {runs[str(found[lr])]["status"] for lr in (1e-3, 1e-2)} == {"finished"}


def test_failed_job_wandb_run_is_closed_as_failed_and_the_next_job_has_its_own(failing_sweep):
    _, found, _ = failing_sweep
    failed, nxt = read_run(found[1e30]), read_run(found[0.01])
    assert failed["exited"] and failed["exit_code"] != 0
    assert metric(failed["history"], "val/acc") == []
    assert nxt["exited"] and nxt["exit_code"] == 0 and nxt["run"]["id"] != failed["run"]["id"]
    assert len(metric(nxt["history"], "val/acc")) == EPOCHS
    assert {read_run(d)["run"]["group"] for d in found.values()} == {"digits5-9_10shot_finetune"}
    summary = read_run(found[1e30].parent)  # the report's summary run, in the sweep directory
    assert summary["run"]["job_type"] == "report" and summary["run"]["group"] == "digits5-9_10shot_finetune"
    assert summary["summary"]["report/failed_runs"] == 1 and summary["summary"]["report/finished_runs"] == 2


# ---------------------------------------------------------------------------------------------------
# Optuna: hparams_search=optuna (transferlab's sweeper, src/hydra_plugins/transferlab_optuna)
# ---------------------------------------------------------------------------------------------------

OPTUNA_YAML = REPO / "conf" / "hparams_search" / "optuna.yaml"
QUICK_TRIALS = ["hydra/sweeper/sampler=random", "optimizer.weight_decay=0.01"]  # trials drawn from the seed alone


def optuna_search(tmp_path: Path, *overrides, wait: bool = True):
    """``tl-train hparams_search=optuna`` with the fast settings, as a user runs it (``wait=False``: the
    running process, in a session of its own so that a test can kill it)."""
    args = [*FAST, "hparams_search=optuna", f"paths.output_dir={tmp_path}", *overrides]
    if wait:
        return cli("tl-train", *args, cwd=tmp_path, env=ONE_THREAD)
    return subprocess.Popen([str(BIN / "tl-train"), *args], cwd=tmp_path, env={**os.environ, **ONE_THREAD},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def epochs_trained(run_dir: Path) -> int:
    """Validation epochs in the run's CSV log (counted, not timed)."""
    from transferlab.runs import read_history

    return len(read_history(run_dir, "val/acc"))


def test_optuna_config_composes_and_maximises_the_objective():
    cfg = hydra_compose("hparams_search=optuna")
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_ == "hydra_plugins.transferlab_optuna.sweeper.OptunaSweeper"
    assert sweeper.direction == "maximize" and cfg.objective == "val/acc_best"
    assert str(cfg.hydra.mode) == "RunMode.MULTIRUN"  # no -m needed
    assert 1 <= sweeper.n_trials <= 20 and sweeper.storage is None and sweeper.pruner.kind is None  # no pruning
    assert sweeper.sampler._target_ == "optuna.samplers.TPESampler" and sweeper.sampler.seed == 42
    assert set(sweeper.params) == {"optimizer.lr", "optimizer.weight_decay"}
    from transferlab.studies import PRUNERS

    offered = {p.stem for p in (REPO / "conf" / "hydra" / "sweeper" / "pruner").glob("*.yaml")}
    assert offered == set(PRUNERS.names()) == {"median", "hyperband", "successive_halving"}  # and none (no file)
    for name in offered:  # each file's kind is its name and its arguments are the pruner's
        assert hydra_compose("hparams_search=optuna", f"hydra/sweeper/pruner={name}").hydra.sweeper.pruner.kind == name
    assert sweeper.study_name == cfg.experiment_name
    assert commented_keys(OPTUNA_YAML) == []


def test_optuna_params_in_hydra_syntax_and_as_optuna_distributions_are_the_same_search():
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    from hydra_plugins.transferlab_optuna.sweeper import search_space

    hydra_syntax = {"optimizer.lr": "tag(log, interval(1e-4, 3e-2))", "optimizer.weight_decay": "interval(0.0, 0.1)",
                    "data.batch_size": "range(8, 40, 8)", "strategy": "choice(finetune, linear_probe)"}
    optuna_form = {"optimizer.lr": {"type": "float", "low": 1e-4, "high": 3e-2, "log": True},
                   "optimizer.weight_decay": {"type": "float", "low": 0.0, "high": 0.1},
                   "data.batch_size": {"type": "int", "low": 8, "high": 32, "step": 8},
                   "strategy": {"type": "categorical", "choices": ["finetune", "linear_probe"]}}
    space, fixed = search_space(hydra_syntax, ["trainer.max_epochs=3", "seed=1,2"])
    assert space == {**search_space(optuna_form, ["seed=choice(1,2)"])[0]}
    assert space["optimizer.lr"] == FloatDistribution(1e-4, 3e-2, log=True)
    assert space["data.batch_size"] == IntDistribution(8, 32, step=8)  # range's stop is exclusive
    assert space["seed"] == CategoricalDistribution([1, 2])
    assert fixed == {"trainer.max_epochs": "trainer.max_epochs=3"}
    # the command line wins over hydra.sweeper.params: a fixed value, or a search of its own
    assert "optimizer.lr" not in search_space(hydra_syntax, ["optimizer.lr=0.01"])[0]


@pytest.mark.slow
def test_optuna_search_records_a_failed_trial_and_goes_on(tmp_path):
    """Both syntaxes in one real search: weight decay as an Optuna distribution given on the command line,
    lr as a Hydra choice that includes an invalid value. Failed trials are FAIL in the study (with the
    reason), leave failed.json, and the search runs its other trials and keeps the best."""
    result = optuna_search(tmp_path, "hydra.sweeper.n_trials=4", "hydra/sweeper/sampler=random",
                           "optimizer.lr=choice(0.001,-1.0)",
                           "hydra.sweeper.params={optimizer.weight_decay:{type:float,low:0.0,high:0.05}}")
    assert result.returncode == 0, result.stderr[-3000:]
    (results_file,) = tmp_path.rglob("optimization_results.yaml")
    sweep_dir = results_file.parent
    results = yaml.safe_load(results_file.read_text())
    trials = by_state(study_trials(results["storage"], results["study_name"]))
    assert len(trials["COMPLETE"]) + len(trials["FAIL"]) == 4 and trials["COMPLETE"] and trials["FAIL"], trials
    for t in trials["FAIL"]:
        assert t.params["optimizer.lr"] == -1.0 and "optimizer.lr=-1.0 is not valid" in t.user_attrs["error"]
        run_dir = sweep_dir / str(t.number)  # job number = trial number
        assert not (run_dir / "metrics.json").exists()
        assert "optimizer.lr=-1.0 is not valid" in json.loads((run_dir / "failed.json").read_text())["error"]
    finished = {}
    for t in trials["COMPLETE"]:
        metrics = json.loads((sweep_dir / str(t.number) / "metrics.json").read_text())
        config = yaml.safe_load((sweep_dir / str(t.number) / "config.yaml").read_text())
        assert 0.0 <= t.params["optimizer.weight_decay"] <= 0.05  # the command line's distribution
        assert config["optimizer"]["weight_decay"] == pytest.approx(t.params["optimizer.weight_decay"])
        assert t.value == metrics["val/acc_best"]  # what tl-train returned is metrics.json's objective
        finished[t.number] = (t.value, t.params)
    best = max(finished.values(), key=lambda v: v[0])
    assert results["best_value"] == pytest.approx(best[0], abs=1e-12)
    assert results["best_params"]["optimizer.lr"] == best[1]["optimizer.lr"]
    assert results["trials"] == {"complete": len(finished), "pruned": 0, "failed": len(trials["FAIL"]), "lost": 0}
    md = (sweep_dir / "report.md").read_text()
    assert f"{len(finished)} finished, {len(trials['FAIL'])} failed" in md
    assert f"## Optuna study `{results['study_name']}`" in md and "Best val/acc_best" in md
    assert (sweep_dir / "optimization_history.png").stat().st_size > 0 and "optimization_history.png" in md
    # A trial's config.yaml names its trial; reproducing it must not report into the study again.
    number = min(finished)
    reported = len(study_trials(results["storage"], results["study_name"])[number].intermediate_values)
    again = cli("tl-reproduce", str(sweep_dir / str(number)), "--out", str(tmp_path / "again"), cwd=tmp_path,
                env=ONE_THREAD)
    assert again.returncode == 0, again.stderr[-3000:]
    trials_now = study_trials(results["storage"], results["study_name"])
    assert len(trials_now) == 4 and len(trials_now[number].intermediate_values) == reported == EPOCHS
    assert yaml.safe_load((tmp_path / "again" / "config.yaml").read_text())["optuna_trial"] is None


def test_optuna_search_where_every_trial_fails_reports_them_and_exits_with_an_error(tmp_path):
    """A value the config shows wrong is refused before any trial; a failure only a run meets (weights
    that cannot be read) fails each trial, and the search ends with its report and one error line."""
    (tmp_path / "refused").mkdir()
    (tmp_path / "failing").mkdir()
    refused = optuna_search(tmp_path / "refused", "hydra.sweeper.n_trials=2", "optimizer.lr=-1.0")
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    errors = [ln for ln in refused.stderr.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 1 and "optimizer.lr=-1.0 is not valid" in errors[0], refused.stderr[-2000:]
    assert not list((tmp_path / "refused").rglob("failed.json"))  # no trial ran

    weights = tmp_path / "weights.ckpt"
    weights.write_bytes(b"not a checkpoint")
    result = optuna_search(tmp_path / "failing", "hydra.sweeper.n_trials=2", f"model.checkpoint={weights}",
                           "source=none")
    assert result.returncode == 1
    assert len(list(tmp_path.rglob("failed.json"))) == 2 and not list(tmp_path.rglob("metrics.json"))
    assert "Traceback" not in result.stderr
    errors = [ln for ln in result.stderr.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 1 and "no trial completed (2 failed, 0 pruned)" in errors[0], result.stderr[-2000:]
    (report,) = tmp_path.rglob("report.md")
    md = report.read_text()
    assert "0 finished, 2 failed" in md and md.count(str(weights)) >= 2, md
    assert "best_value" not in yaml.safe_load((report.parent / "optimization_results.yaml").read_text())


@pytest.mark.slow
def test_median_pruning_stops_bad_trials_and_spends_fewer_epochs(tmp_path):
    """The same 4 random trials with and without the median pruner: lr 1e-7 (useless), 0.001, 0.001, 1e-7
    (sampler seed 42). The last is worse than the median of the complete ones and stops early."""
    searches = {}
    arguments = {"none": [], "median": ["hydra.sweeper.pruner.n_startup_trials=1",
                                        "hydra.sweeper.pruner.n_warmup_steps=0"]}
    for pruner in ("none", "median"):
        out = tmp_path / pruner
        out.mkdir()
        url = f"sqlite:///{out / 'study.db'}"
        result = optuna_search(out, *QUICK_TRIALS, "hydra.sweeper.n_trials=4", "optimizer.lr=choice(0.001,1e-7)",
                               f"hydra/sweeper/pruner={pruner}", *arguments[pruner], f"hydra.sweeper.storage={url}",
                               "hydra.sweeper.study_name=lr")
        assert result.returncode == 0, result.stderr[-3000:]
        searches[pruner] = (out, by_state(study_trials(url, "lr")))
    out, unpruned = searches["none"]
    assert set(unpruned) == {"COMPLETE"} and len(unpruned["COMPLETE"]) == 4
    full = sum(epochs_trained(d) for (d,) in trial_dirs(out).values())
    assert full == 4 * EPOCHS
    out, pruned = searches["median"]
    assert pruned["PRUNED"], pruned
    assert {t.params["optimizer.lr"] for t in unpruned["COMPLETE"]} == {0.001, 1e-7}
    dirs = trial_dirs(out)
    for t in pruned["PRUNED"]:
        assert t.params["optimizer.lr"] == 1e-7  # only the useless learning rate
        (run_dir,) = dirs[t.number]
        record = json.loads((run_dir / "pruned.json").read_text())
        assert not (run_dir / "metrics.json").exists() and not (run_dir / "failed.json").exists()
        assert record["trial"] == t.number and record["epoch"] < EPOCHS - 1 and record["metric"] == "val/acc"
        assert t.intermediate_values[record["epoch"]] == pytest.approx(record["value"])
    spent = sum(epochs_trained(d) for (d,) in dirs.values())
    assert spent < full, (spent, full)
    (report,) = out.rglob("report.md")
    md = report.read_text()
    assert f"{len(pruned['PRUNED'])} pruned, 0 failed" in md and "## Pruned trials" in md
    pruned_table = md.split("## Pruned trials")[1]
    assert all(str(dirs[t.number][0]) in pruned_table for t in pruned["PRUNED"])


@pytest.mark.slow
def test_optuna_search_killed_mid_study_continues_with_the_same_command(tmp_path):
    """SIGKILL of tl-train while its second trial trains, then the same command line: the study ends with
    exactly n_trials complete trials, the killed one is marked failed (not counted) and nothing ran twice."""
    import signal
    import time

    url = f"sqlite:///{tmp_path / 'study.db'}"
    command = ("hydra.sweeper.n_trials=4", f"hydra.sweeper.storage={url}", "hydra.sweeper.study_name=resumable",
               "hydra.sweeper.heartbeat_interval=1", "hydra.sweeper.grace_period=4")
    proc = optuna_search(tmp_path, *command, wait=False)
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline:
            time.sleep(0.5)
            if not (tmp_path / "study.db").exists():
                continue
            try:
                states = by_state(study_trials(url, "resumable"))
            except KeyError:  # study not created yet
                continue
            running = {t.number for t in states.get("RUNNING", [])}
            dirs = trial_dirs(tmp_path / "multirun")
            # kill once the running trial has its run directory (on a loaded machine a fixed sleep could
            # land before Hydra created it), and before it finishes
            if states.get("COMPLETE") and running and running <= dirs.keys():
                if not any((dirs[n][0] / "metrics.json").exists() for n in running):
                    break
        else:
            pytest.fail("the search never reached its second trial")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    before = by_state(study_trials(url, "resumable"))
    assert len(before.get("COMPLETE", [])) < 4 and before["RUNNING"]
    killed = {t.number for t in before["RUNNING"]}
    result = optuna_search(tmp_path, *command)
    assert result.returncode == 0, result.stderr[-3000:]
    after = by_state(study_trials(url, "resumable"))
    assert len(after["COMPLETE"]) == 4 and "RUNNING" not in after
    assert {t.number for t in after["FAIL"]} == killed and all("error" not in t.user_attrs for t in after["FAIL"])
    assert {t.number for t in before["COMPLETE"]} < {t.number for t in after["COMPLETE"]}  # kept, not re-run
    params = [tuple(sorted(t.params.items())) for t in after["COMPLETE"]]
    assert len(set(params)) == 4  # a resumed sampler does not propose the first trials again
    dirs = trial_dirs(tmp_path / "multirun")
    assert all(len(d) == 1 for d in dirs.values())  # every trial ran in one run directory, once
    assert {n for n, (d,) in dirs.items() if (d / "metrics.json").is_file()} == {t.number for t in after["COMPLETE"]}
    assert all(not (dirs[n][0] / "metrics.json").exists() for n in killed)


# ---------------------------------------------------------------------------------------------------
# SLURM: hydra/launcher=slurm
# ---------------------------------------------------------------------------------------------------

SLURM_YAML = REPO / "conf" / "hydra" / "launcher" / "slurm.yaml"


def test_slurm_launcher_composes_with_every_plugin_setting():
    from hydra.utils import instantiate
    from hydra_plugins.hydra_submitit_launcher.config import SlurmQueueConf
    from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher
    from omegaconf import OmegaConf

    cfg = hydra_compose("hydra/launcher=slurm", "hydra.launcher.partition=gpu")
    launcher = cfg.hydra.launcher
    assert launcher._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert set(launcher) == set(OmegaConf.structured(SlurmQueueConf))  # every setting shown (and documented)
    assert launcher.partition == "gpu" and launcher.timeout_min > 0 and launcher.tasks_per_node == 1
    assert launcher.name == cfg.experiment_name
    assert commented_keys(SLURM_YAML) == []
    obj = instantiate(launcher)  # (Hydra's plugin scan may import the module twice: compare by name)
    assert type(obj).__qualname__ == SlurmLauncher.__qualname__ and obj.params["partition"] == "gpu"


def _fake(bin_dir: Path, name: str, body: str) -> None:
    path = bin_dir / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


def test_slurm_launcher_submits_the_sweep_as_one_job_array(tmp_path):
    """The real `tl-train -m hydra/launcher=slurm`, with stand-ins for srun/sbatch that keep the batch script
    submitit writes and refuse to submit it: every setting must become an #SBATCH line, and nothing runs here."""
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    _fake(fake_bin, "srun", "exit 1\n")
    _fake(fake_bin, "sbatch", 'for a in "$@"; do last="$a"; done\ncp "$last" "$SBATCH_CAPTURE"\n'
                              'echo "sbatch: error: test stand-in, nothing submitted" >&2\nexit 1\n')
    captured = tmp_path / "sbatch.sh"
    result = cli("tl-train", "-m", *FAST, "hydra/launcher=slurm", "hydra.launcher.partition=gpu",
                 "hydra.launcher.timeout_min=30", "hydra.launcher.gpus_per_node=2", "hydra.launcher.mem_gb=16",
                 "+hydra.launcher.additional_parameters.mail-type=END", "seed=1,2,3", f"paths.output_dir={tmp_path / 'out'}",
                 cwd=tmp_path, env={"PATH": f"{fake_bin}:{os.environ['PATH']}", "SBATCH_CAPTURE": str(captured)},
                 timeout=120)
    assert result.returncode != 0 and "test stand-in, nothing submitted" in result.stderr
    script = captured.read_text()
    sbatch = dict(re.findall(r"^#SBATCH --([\w-]+)=(.*)$", script, re.M))
    assert sbatch["array"] == "0-2%3"  # the 3 jobs of the sweep, one array
    assert sbatch["partition"] == "gpu" and sbatch["time"] == "30" and sbatch["gpus-per-node"] == "2"
    assert sbatch["mem"] == "16GB" and sbatch["mail-type"] == "END" and sbatch["ntasks-per-node"] == "1"
    assert sbatch["job-name"] == "digits5-9_10shot_finetune"  # experiment_name
    assert "-m submitit.core._submit" in script and str(tmp_path / "out" / "multirun") in script
    assert not list(tmp_path.rglob("metrics.json")) and not list(tmp_path.rglob("config.yaml"))


# ---------------------------------------------------------------------------------------------------
# W&B sweeps: scripts/wandb_sweep.yaml
# ---------------------------------------------------------------------------------------------------

WANDB_SWEEP = REPO / "scripts" / "wandb_sweep.yaml"


def sweep_spec() -> dict:
    return yaml.safe_load(WANDB_SWEEP.read_text())


def agent_command(spec: dict, values: dict) -> list[str]:
    """The command ``wandb agent`` runs for one set of parameter values (wandb_agent.Agent._command_run)."""
    from wandb.sdk.launch.sweeps import utils as sweep_utils

    command = sweep_utils.create_sweep_command(list(spec["command"]))
    macros = sweep_utils.create_sweep_command_args({"args": {k: {"value": v} for k, v in values.items()}})
    macros.update(interpreter=["python"], program=[spec["program"]], env=["/usr/bin/env"])
    out = []
    for chunk in map(str, command):
        out += (macros.get(chunk[2:-1]) or []) if chunk.startswith("${") and chunk.endswith("}") else [chunk]
    return out


def parameter_samples(spec: dict) -> list[dict]:
    """Value sets covering every parameter's extremes (bounds of distributions, every listed value)."""
    choices = {}
    for name, p in spec["parameters"].items():
        if "values" in p:
            choices[name] = list(p["values"])
        elif "value" in p:
            choices[name] = [p["value"]]
        else:
            choices[name] = [float(p["min"]), float(p["max"])]
    width = max(len(v) for v in choices.values())
    return [{k: v[i % len(v)] for k, v in choices.items()} for i in range(width)]


def split_command(command: list[str]) -> tuple[dict, list[str]]:
    """``/usr/bin/env [NAME=VALUE ...] tl-train OVERRIDES`` -> (environment, overrides)."""
    assert command[0] == "/usr/bin/env", command
    i = 1
    env = {}
    while re.match(r"^[A-Z_][A-Z0-9_]*=", command[i]):
        key, value = command[i].split("=", 1)
        env[key] = value
        i += 1
    assert command[i] == "tl-train", command
    return env, command[i + 1:]


def test_wandb_sweep_config_drives_tl_train_and_maximises_the_objective():
    spec = sweep_spec()
    cfg = compose()
    assert spec["program"] == "tl-train" and (BIN / "tl-train").is_file()
    assert spec["method"] in {"grid", "random", "bayes"}
    assert spec["metric"] == {"name": cfg.objective, "goal": "maximize"}
    assert spec["command"][0] == "${env}" and "tl-train" in spec["command"] and spec["command"][-1] == "${args_no_hyphens}"
    assert {"optimizer.lr", "optimizer.weight_decay", "strategy"} <= set(spec["parameters"])


def test_wandb_sweep_command_is_a_valid_override_list(monkeypatch, tmp_path):
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf


    spec = sweep_spec()
    monkeypatch.setenv("WANDB_RUN_ID", "abc123")  # the agent sets it for each run
    names = set()
    for values in parameter_samples(spec):
        env, overrides = split_command(agent_command(spec, values))
        assert env == {"WANDB_MODE": "online"}  # transferlab is offline unless told; a sweep run must report back
        parsed = OverridesParser.create().parse_overrides(overrides)
        assert not any(o.is_sweep_override() for o in parsed), overrides  # one run per agent command
        cfg = compose(*overrides, run_dir=tmp_path)
        resolve(cfg)
        for key, value in values.items():
            chosen = cfg.strategy.label if key == "strategy" else OmegaConf.select(cfg, key)
            assert chosen == pytest.approx(value) if isinstance(value, float) else chosen == value, (key, chosen)
        assert Path(hydra_compose(*overrides).hydra.run.dir).name == "abc123"  # one run directory per W&B run
        names.add(cfg.experiment_name)
    assert len(names) == 1  # one W&B group for the whole sweep, whatever the strategy


def test_wandb_sweep_command_runs_tl_train(tmp_path):
    """The command the agent would run, for real (offline instead of online, with the fast test settings), in a
    process of its own as the agent starts it: W&B reads the agent's variables (WANDB_RUN_ID ...) once per
    process."""
    spec = sweep_spec()
    env, overrides = split_command(agent_command(spec, parameter_samples(spec)[0]))
    run_id = "sweeprun1"
    result = process("tl-train", *overrides, *FAST, "logger=many", f"paths.output_dir={tmp_path}", cwd=tmp_path,
                     env={**env, **ONE_THREAD, "WANDB_MODE": "offline", "WANDB_RUN_ID": run_id})
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = [p.parent for p in tmp_path.rglob("metrics.json")]
    assert run_dir.name == run_id
    wb = read_run(run_dir)
    assert wb["run"]["id"] == run_id and wb["exited"]
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert wb["run"]["group"] == config["experiment_name"] and wb["run"]["job_type"] == config["strategy"]["label"]
    assert wb["summary"][spec["metric"]["name"]] == pytest.approx(
        json.loads((run_dir / "metrics.json").read_text())[spec["metric"]["name"]])
