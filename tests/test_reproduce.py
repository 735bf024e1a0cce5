"""``tl-reproduce RUN_DIR`` and ``tl-train resume=RUN_DIR``, through the real console scripts.

Reproduce: an unchanged run must reproduce exactly on CPU (exit 0); a run whose metrics.json was
altered, or that another code version made, must not. Resume: a run killed with SIGKILL after an epoch
continues from ``checkpoints/last.ckpt`` in its own directory and must end with the metrics the same
run gets uninterrupted.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from helpers import BIN, FAST, ONE_THREAD, cli, compose, run_dirs, torch_threads, train

from transferlab.cli.reproduce import COMPARED
from transferlab.plan import resolve


@pytest.fixture(scope="module")
def original(tmp_path_factory) -> Path:
    """One finished run (CPU, helpers.FAST), trained in this process: tl-train's code path without its start-up."""
    run_dir = tmp_path_factory.mktemp("original") / "run"
    with torch_threads(1):
        train(run_dir)
    return run_dir


def copy_run(run_dir: Path, to: Path) -> Path:
    shutil.copytree(run_dir, to)
    return to


def edit_json(path: Path, change) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data, indent=2))


def reproduce(*args, cwd: Path):
    return cli("tl-reproduce", *map(str, args), cwd=cwd, env=ONE_THREAD)


# ---------------------------------------------------------------------------------------------------
# tl-reproduce
# ---------------------------------------------------------------------------------------------------

def test_reproduce_passes_on_an_unchanged_run(original, tmp_path):
    before = (original / "metrics.json").read_bytes()
    result = reproduce(original, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert "reproduced: every metric matches" in result.stdout
    (new,) = [p for p in original.parent.iterdir() if p.name.startswith(f"{original.name}-reproduced-")]
    assert f"new run: {new}" in result.stdout
    old_metrics = json.loads(before)
    new_metrics = json.loads((new / "metrics.json").read_text())
    for key in COMPARED:  # exactly: a CPU run is deterministic
        assert new_metrics[key] == old_metrics[key], key
        line = next(ln for ln in result.stdout.splitlines() if ln.startswith(key))
        assert line.split()[1:] == [f"{old_metrics[key]:.6f}", f"{new_metrics[key]:.6f}", "yes"]
    assert yaml.safe_load((new / "config.yaml").read_text())["paths"]["run_dir"] == str(new)
    assert (new / "checkpoints" / "last.ckpt").is_file() and (new / "env.json").is_file()
    assert (original / "metrics.json").read_bytes() == before  # the original run is left as it was


def test_reproduce_fails_when_a_metric_was_altered(original, tmp_path):
    run_dir = copy_run(original, tmp_path / "run")
    edit_json(run_dir / "metrics.json", lambda m: m.update({"test/acc": m["test/acc"] + 0.05}))
    result = reproduce(run_dir, "--out", tmp_path / "new", cwd=tmp_path)
    assert result.returncode != 0
    assert "not reproduced: test/acc differ" in result.stderr
    assert "reproduced: every metric matches" not in result.stdout
    assert next(ln for ln in result.stdout.splitlines() if ln.startswith("test/acc")).split()[-1] == "no"
    assert next(ln for ln in result.stdout.splitlines() if ln.startswith("test/f1")).split()[-1] == "yes"
    assert (tmp_path / "new" / "metrics.json").is_file()  # the new run is kept for inspection


def reproduce_here(*args, capsys) -> tuple[int, str, str]:
    """``tl-reproduce args`` in this process (the console script's own main): exit code, stdout, stderr."""
    from transferlab.cli.reproduce import main

    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


def test_reproduce_fails_when_a_metric_was_altered_slightly(original, tmp_path, capsys, one_torch_thread):
    run_dir = copy_run(original, tmp_path / "run")
    edit_json(run_dir / "metrics.json", lambda m: m.update({"test/f1": m["test/f1"] + 0.001}))
    code, out, err = reproduce_here(run_dir, "--out", tmp_path / "new", capsys=capsys)
    assert "(tolerance 0)" in out
    assert code != 0 and "not reproduced: test/f1" in err


def test_reproduce_refuses_a_run_of_another_code_version(original, tmp_path, capsys, one_torch_thread):
    run_dir = copy_run(original, tmp_path / "run")
    other = "0123456789abcdef0123456789abcdef01234567"
    edit_json(run_dir / "env.json", lambda e: e["git"].update(commit=other))
    code, _, err = reproduce_here(run_dir, "--out", tmp_path / "refused", capsys=capsys)
    assert code != 0 and other in err and "--allow-version-change" in err
    assert not (tmp_path / "refused").exists()  # refused before anything ran
    code, out, err = reproduce_here(run_dir, "--out", tmp_path / "allowed", "--allow-version-change", capsys=capsys)
    assert code == 0, out + err
    assert "reproduced: every metric matches" in out


def test_reproduce_refuses_a_run_that_never_finished(original, tmp_path, capsys):
    run_dir = copy_run(original, tmp_path / "run")
    (run_dir / "metrics.json").unlink()
    code, _, err = reproduce_here(run_dir, capsys=capsys)
    assert code != 0
    assert "has no metrics.json" in err and f"tl-train resume={run_dir}" in err


# ---------------------------------------------------------------------------------------------------
# tl-train resume=RUN_DIR after a real kill
# ---------------------------------------------------------------------------------------------------

RESUME_RUN = [*FAST, "trainer.max_epochs=8"]


def kill_after_first_checkpoint(out: Path, timeout: float = 300) -> tuple[Path, int]:
    """Start `tl-train` (its own process group), SIGKILL it once checkpoints/last.ckpt exists; the run dir
    and the epoch last.ckpt holds."""
    import torch

    proc = subprocess.Popen([str(BIN / "tl-train"), *RESUME_RUN, f"paths.output_dir={out}"], cwd=out,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            env={**os.environ, **ONE_THREAD})
    deadline = time.monotonic() + timeout
    try:
        while not (lasts := list((out / "runs").glob("*/*/checkpoints/last.ckpt"))):
            assert proc.poll() is None, f"tl-train ended before its first checkpoint: {proc.stderr.read()[-3000:]}"
            assert time.monotonic() < deadline, "no checkpoints/last.ckpt in time"
            time.sleep(0.02)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # the group this test started, nothing else
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "tl-train finished before it could be killed"
    (last,) = lasts
    run_dir = last.parent.parent
    assert not (run_dir / "metrics.json").exists()
    epoch = torch.load(last, map_location="cpu", weights_only=False)["epoch"]
    return run_dir, epoch


@pytest.fixture(scope="module")
def resumed(tmp_path_factory):
    """A run killed after its first checkpoint and resumed, and the same run uninterrupted."""
    killed_out = tmp_path_factory.mktemp("killed")
    run_dir, killed_epoch = kill_after_first_checkpoint(killed_out)
    result = cli("tl-train", f"resume={run_dir}", cwd=killed_out, env=ONE_THREAD)
    with torch_threads(1):  # the same run uninterrupted, in this process (same thread count as tl-train's)
        full = train(tmp_path_factory.mktemp("uninterrupted") / "run", *RESUME_RUN, fast=False)
    return {"dir": run_dir, "killed_epoch": killed_epoch, "result": result, "out": killed_out, "full": full}


@pytest.mark.slow
def test_resume_continues_the_killed_run_in_its_own_directory(resumed):
    result, run_dir = resumed["result"], resumed["dir"]
    assert result.returncode == 0, result.stderr[-3000:]
    assert resumed["killed_epoch"] < 7  # killed with epochs left to train
    log = (run_dir / "train.log").read_text()  # Lightning's own messages go to the run's log, not the console
    assert f"Restored all states from the checkpoint at {run_dir / 'checkpoints' / 'last.ckpt'}" in log
    assert run_dirs(resumed["out"]) == [run_dir]  # no second run directory
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["epochs"] == 8 and set(COMPARED) <= metrics.keys()
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["paths"]["run_dir"] == str(run_dir) and config["trainer"]["max_epochs"] == 8


@pytest.mark.slow
def test_resumed_run_ends_with_the_uninterrupted_runs_metrics(resumed):
    assert resumed["result"].returncode == 0, resumed["result"].stderr[-3000:]
    metrics = json.loads((resumed["dir"] / "metrics.json").read_text())
    full = resumed["full"]
    for key in (*COMPARED, "test/loss", "epochs"):
        assert metrics[key] == full[key], (key, metrics[key], full[key])


@pytest.mark.slow
def test_resume_refuses_a_run_that_already_finished(resumed):
    from transferlab import run
    from transferlab.errors import ConfigError

    assert (resumed["dir"] / "metrics.json").is_file()
    with pytest.raises(ConfigError, match="already finished"):
        run.train(resolve(compose(f"resume={resumed['dir']}", run_dir=resumed["dir"])))
