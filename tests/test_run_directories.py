"""Run directories as users collide with them: two runs started in the same second, a run pointed at a
folder that holds another run, a damaged cached source run, results written as strict JSON."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml
from helpers import BIN, ONE_THREAD, cli, compose, train

from transferlab import runs
from transferlab.plan import resolve

RUN = ["source=none", "logger=csv", "trainer.max_epochs=1", "trainer.enable_progress_bar=false"]


@pytest.mark.slow
def test_two_runs_started_in_the_same_second_get_a_directory_each(tmp_path):
    """Both name the same timestamped folder (forced here through the same resolver the default uses);
    the second to create it takes ``-1``, and each folder holds only its own run."""
    base = tmp_path / "runs" / "same-second"
    procs = [subprocess.Popen([str(BIN / "tl-train"), *RUN, f"seed={seed}", f"hydra.run.dir=${{tl.run_dir:null,{base}}}"],
                              cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, **ONE_THREAD}) for seed in (1, 2)]
    outputs = [p.communicate(timeout=600) for p in procs]
    for p, (_, err) in zip(procs, outputs):
        assert p.returncode == 0, err[-3000:]
    dirs = sorted(p.parent for p in (tmp_path / "runs").rglob("metrics.json"))
    assert [d.name for d in dirs] == ["same-second", "same-second-1"]
    seeds = sorted(json.loads((d / "metrics.json").read_text())["seed"] for d in dirs)
    assert seeds == [1, 2]
    for d in dirs:  # each folder's record, checkpoints and logs are its own run's
        seed = json.loads((d / "metrics.json").read_text())["seed"]
        assert yaml.safe_load((d / "config.yaml").read_text())["seed"] == seed
        assert f"seed={seed}" in yaml.safe_load((d / ".hydra" / "overrides.yaml").read_text())
        assert sorted(p.name for p in (d / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]
        assert [p.name for p in (d / "csv").rglob("metrics.csv")] == ["metrics.csv"]


def test_a_run_never_writes_into_a_folder_holding_another_run(tmp_path, one_torch_thread):
    """The programmatic path (tl-reproduce --out, run.train) refuses as tl-train's does."""
    from transferlab import run
    from transferlab.errors import ConfigError

    metrics = train(tmp_path / "run", *RUN, fast=False)
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "run").rglob("*")}
    with pytest.raises(ConfigError, match="already holds a finished run"):
        run.train(resolve(compose(*RUN, "seed=7", run_dir=tmp_path / "run")))
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "run").rglob("*")} == before
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["seed"] == metrics["seed"]


def test_a_damaged_cached_source_run_is_trained_again(tmp_path, one_torch_thread, caplog):
    cache = tmp_path / "cache"
    first = train(tmp_path / "a", f"paths.cache_dir={cache}")
    (source_dir,) = (cache / "sources").iterdir()
    best = Path(json.loads((source_dir / "metrics.json").read_text())["best_checkpoint"])
    best.write_bytes(best.read_bytes()[:1000])  # truncated, as by a full disk or a killed copy
    with caplog.at_level("WARNING", logger="transferlab.source"):
        second = train(tmp_path / "b", f"paths.cache_dir={cache}")
    assert any("unusable" in r.getMessage() and str(source_dir) in r.getMessage() for r in caplog.records)
    assert second["test/acc"] == first["test/acc"]  # the same source, trained again the same way
    assert json.loads((source_dir / "metrics.json").read_text())["best_checkpoint"]


def test_metrics_are_strict_json_without_nan_or_infinity(tmp_path):
    runs.write_json(tmp_path / "m.json", {"val/acc_best": float("-inf"), "x": [float("nan"), 1.5]})

    def refuse(constant):
        raise ValueError(f"{constant} is not JSON")

    assert json.loads((tmp_path / "m.json").read_text(), parse_constant=refuse) == {"val/acc_best": None,
                                                                                    "x": [None, 1.5]}


def test_compile_on_a_cpu_warns(tmp_path, caplog):
    from transferlab import run

    with caplog.at_level("WARNING", logger="transferlab.run"):
        run.build(resolve(compose(*RUN, "model.compile=true", "trainer.accelerator=cpu", run_dir=tmp_path)))
    assert any("model.compile=true on a CPU" in r.getMessage() for r in caplog.records)


def snapshot(root: Path) -> dict[str, tuple]:
    """Every file under ``root`` with its size and modification time: what a command changed."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}


@pytest.mark.slow
def test_no_sweep_of_any_command_writes_into_a_folder_holding_a_finished_sweep(tmp_path):
    """tl-eval -m, tl-train -m and an Optuna search pointed at a finished sweep's folder are refused
    before anything is written: its runs' metrics.json, .hydra/ records and report stay as they were.
    Through each console script's main(): Hydra's sweep launcher is what is tested."""
    sweep = tmp_path / "sweep"
    done = cli("tl-train", "-m", *RUN, "seed=1", f"hydra.sweep.dir={sweep}", cwd=tmp_path, env=ONE_THREAD)
    assert done.returncode == 0, done.stderr[-3000:]
    best = sweep / "0" / "checkpoints" / "best.ckpt"
    before = snapshot(sweep)
    assert "0/metrics.json" in before
    attempts = {
        "tl-eval -m": ("tl-eval", "-m", f"ckpt_path={best},{best}", f"hydra.sweep.dir={sweep}"),
        "tl-train -m": ("tl-train", "-m", *RUN, "seed=2,3", f"hydra.sweep.dir={sweep}"),
        "optuna": ("tl-train", "hparams_search=optuna", *RUN, "hydra.sweeper.n_trials=1", f"hydra.sweep.dir={sweep}"),
    }
    for name, (command, *args) in attempts.items():
        result = cli(command, *args, cwd=tmp_path, env=ONE_THREAD)
        assert result.returncode == 2 and "Traceback" not in result.stderr, (name, result.stderr[-3000:])
        assert f"error: '{sweep}' already holds 1 run(s) of another sweep (0)" in result.stderr, name
        assert snapshot(sweep) == before, name

