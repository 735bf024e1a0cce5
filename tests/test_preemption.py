"""Pre-emption and resume as a user meets them: a real signal mid-training, ``tl-train resume=``, and the
metrics of the run that was never interrupted.

The guarantee (README, "Resume"): SIGTERM or Ctrl-C saves nothing mid-epoch; ``checkpoints/last.ckpt``
holds the end of the last finished epoch, and ``resume=`` repeats the interrupted epoch exactly, so the
resumed run ends with the uninterrupted run's metrics, bit for bit on CPU. A run directory moved or
copied before resuming keeps its best checkpoint and score.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from concurrent.futures import ThreadPoolExecutor
from functools import partial

import pytest
from helpers import BIN, ONE_THREAD, RUN, cli, interrupt

from transferlab.metrics import COMPARED
from transferlab.models.checkpoint import read_checkpoint
from transferlab.runs import resume_command

pytestmark = pytest.mark.slow

SAME = (*COMPARED, "test/loss", "val/acc_best", "epochs")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("preemption")
    dirs = {"sigterm": root / "sig term $(touch pwned)", "ctrl_c": root / "ctrl_c"}  # a name a shell would run
    with ThreadPoolExecutor(max_workers=2) as pool:  # two processes at a time on 2 cores
        full = pool.submit(cli, "tl-train", *RUN, f"hydra.run.dir={root / 'uninterrupted'}", cwd=root, env=ONE_THREAD)
        stopped = {name: pool.submit(interrupt, dirs[name], sig, root)
                   for name, sig in (("sigterm", signal.SIGTERM), ("ctrl_c", signal.SIGINT))}
        assert full.result().returncode == 0, full.result().stderr[-3000:]
        out = {"root": root, "dirs": dirs, "full": json.loads((root / "uninterrupted" / "metrics.json").read_text())}
        for name, future in stopped.items():
            code, stderr, epoch = future.result()
            out[name] = {"code": code, "stderr": stderr, "epoch": epoch,
                         "last": read_checkpoint(dirs[name] / "checkpoints" / "last.ckpt")}
    # resume= with overrides is refused before anything is written into the run
    before = sorted((p, p.stat().st_mtime_ns) for p in dirs["sigterm"].rglob("*"))
    out["overrides"] = cli("tl-train", f"resume='{dirs['sigterm']}'", "trainer.max_epochs=8", "optimizer.lr=0.5",
                           cwd=root, env=ONE_THREAD)
    out["untouched"] = before == sorted((p, p.stat().st_mtime_ns) for p in dirs["sigterm"].rglob("*"))
    # Ctrl-C, then the run directory is moved before resuming
    dirs["moved"] = root / "ctrl_c_moved"
    shutil.move(dirs["ctrl_c"], dirs["moved"])
    # the SIGTERM run resumes with the very line it printed, pasted into a shell
    hint = next(line for line in out["sigterm"]["stderr"].splitlines() if line.startswith("resume with: "))
    out["hint"] = hint.removeprefix("resume with: ")
    paste = partial(subprocess.run, ["bash", "-c", out["hint"]], cwd=root, capture_output=True, text=True,
                    timeout=600, env={**os.environ, **ONE_THREAD, "PATH": f"{BIN}:{os.environ['PATH']}"})
    with ThreadPoolExecutor(max_workers=2) as pool:
        resumed = {"sigterm": pool.submit(paste),
                   "ctrl_c": pool.submit(cli, "tl-train", f"resume={dirs['moved']}", cwd=root, env=ONE_THREAD)}
        for name, future in resumed.items():
            out[name]["resumed"] = future.result()
    return out


def test_sigterm_exits_143_with_a_quoted_resume_hint_and_no_mid_epoch_checkpoint(runs):
    run = runs["sigterm"]
    assert run["code"] == 143, run["stderr"][-2000:]
    assert runs["hint"] == resume_command(runs["dirs"]["sigterm"]) and "'" in runs["hint"]  # quoted twice
    # last.ckpt is still an epoch's end: no batch of a later epoch counted in it
    assert run["last"]["epoch"] >= run["epoch"]
    assert run["last"]["global_step"] == (run["last"]["epoch"] + 1) * 50  # 5 classes x 50 images / batches of 5


def test_resume_after_sigterm_mid_training_ends_with_the_uninterrupted_runs_metrics(runs):
    resumed = runs["sigterm"]["resumed"]
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert runs["sigterm"]["last"]["epoch"] < 5, "the signal came after training ended; nothing was resumed"
    assert not (runs["root"] / "pwned").exists()  # the pasted hint ran nothing but tl-train
    metrics = json.loads((runs["dirs"]["sigterm"] / "metrics.json").read_text())
    for key in SAME:
        assert metrics[key] == runs["full"][key], (key, metrics[key], runs["full"][key])


def test_resume_after_ctrl_c_ends_with_the_uninterrupted_runs_metrics(runs):
    run = runs["ctrl_c"]
    assert run["code"] != 0 and "resume with: tl-train resume=" in run["stderr"], run["stderr"][-2000:]
    assert run["resumed"].returncode == 0, run["resumed"].stderr[-3000:]
    metrics = json.loads((runs["dirs"]["moved"] / "metrics.json").read_text())
    for key in SAME:
        assert metrics[key] == runs["full"][key], (key, metrics[key], runs["full"][key])


def test_a_moved_run_resumes_with_its_best_checkpoint_and_score(runs):
    moved = runs["dirs"]["moved"]
    metrics = json.loads((moved / "metrics.json").read_text())
    assert metrics["best_checkpoint"] == str(moved / "checkpoints" / "best.ckpt")
    assert sorted(p.name for p in (moved / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]
    assert metrics["val/acc_best"] == runs["full"]["val/acc_best"]


def test_resume_with_overrides_is_refused_and_leaves_the_run_as_it_was(runs):
    result = runs["overrides"]
    assert result.returncode == 2, result.stderr[-2000:]
    assert "trainer.max_epochs=8 optimizer.lr=0.5 would not apply" in result.stderr
    assert "Traceback" not in result.stderr
    assert runs["untouched"]
