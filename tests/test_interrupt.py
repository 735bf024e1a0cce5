"""A run stopped from outside saves its progress, says how to resume, and never looks finished."""
from __future__ import annotations

import signal
import subprocess
import time

import pytest
from conftest import BIN

from transferlab.checkpoints import read_checkpoint


@pytest.mark.slow
def test_sigterm_saves_last_checkpoint_and_exits_with_a_resume_hint(tmp_path):
    proc = subprocess.Popen([str(BIN / "tl-train"), "source=none", "logger=csv", "trainer.max_epochs=500",
                             "trainer.enable_progress_bar=false", f"hydra.run.dir={tmp_path / 'run'}"],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        last = tmp_path / "run" / "checkpoints" / "last.ckpt"
        deadline = time.time() + 180
        while not last.exists() and time.time() < deadline and proc.poll() is None:
            time.sleep(0.2)
        assert last.exists(), "training never finished an epoch"
        time.sleep(1.0)  # now well inside a later epoch
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 143, stderr[-2000:]
    assert f"resume with: tl-train resume={tmp_path / 'run'}" in stderr
    assert read_checkpoint(last)["epoch"] >= 1  # the interrupted epoch's state, loadable tensors-only
    assert not (tmp_path / "run" / "metrics.json").exists()
