"""Shared test helpers: compose a config the way tl-train does and run it in-process or as a user would."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

import pytest
from transferlab.plan import resolve

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

# Fast settings for the default digits transfer: fewer epochs, quiet, CSV only, a quicker source run.
FAST_SOURCE = ("source.overrides=['data=digits','data.classes=[0,1,2,3,4]','source=none','strategy=finetune','logger=csv',"
        "'trainer.max_epochs=4','trainer.enable_progress_bar=false']")
FAST = ["trainer.max_epochs=3", "trainer.enable_progress_bar=false", "logger=csv", FAST_SOURCE,
        "data.train_per_class=10"]  # 2 steps per epoch: the tests' expectations are written for 10 shots


# Every test (and every subprocess it starts) shares one source-model cache and never touches the
# network or ~/.cache: scripts/test.sh hands every test file's process the same one (TL_TEST_CACHE; its
# entries are written under locks and published by rename, as for concurrent sweep jobs), a lone pytest
# makes its own. Set at import, before timm / huggingface_hub read their environment.
os.environ.update(TRANSFERLAB_CACHE=os.environ.get("TL_TEST_CACHE") or tempfile.mkdtemp(prefix="transferlab-cache-"),
                  WANDB_MODE="offline", WANDB_SILENT="true", HF_HUB_OFFLINE="1", PYTHONWARNINGS="ignore")


# One intra-op thread: on 2 busy cores tiny runs are many times faster, and both runs of a comparison
# must use the same thread count (float sums may differ between counts).
ONE_THREAD = {"OMP_NUM_THREADS": "1"}  # for subprocesses


@contextmanager
def torch_threads(n: int):
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def one_torch_thread():
    """In-process runs of a module train with one thread, like the subprocesses."""
    with torch_threads(1):
        yield


def compose(*overrides, run_dir: Path | None = None):
    from transferlab.config import compose_config, set_value

    if "source=none" in overrides:  # FAST's quicker source run would otherwise bring the source run back
        overrides = [o for o in overrides if o != FAST_SOURCE]
    cfg = compose_config(list(overrides))
    if run_dir is not None:
        set_value(cfg, "paths.run_dir", str(run_dir))
    return cfg


def train(run_dir: Path, *overrides, fast: bool = True) -> dict:
    """Run ``tl-train overrides`` in this process (same code path) and return metrics.json."""
    from transferlab import run

    cfg = compose(*(FAST if fast else []), *overrides, run_dir=run_dir)
    run.train(resolve(cfg))
    return json.loads((run_dir / "metrics.json").read_text())


def runs_into(root: Path, *base):
    """``train(name, *overrides)``: a finished run ``root/name`` made through the Python API with ``base``
    overrides first; returns its directory (module fixtures build their sets of runs with it)."""
    import transferlab

    return lambda name, *overrides: transferlab.train(*base, *overrides, run_dir=root / name).run_dir


def cli(command: str, *args, cwd: Path, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run a console script exactly as a user would, capturing its output."""
    return subprocess.run([str(BIN / command), *args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def run_dirs(root: Path) -> list[Path]:
    return sorted(p.parent for p in root.rglob("config.yaml") if (p.parent / "checkpoints").exists())
