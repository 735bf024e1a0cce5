"""A resumed run continues its own logs: the CSV keeps the epochs logged before the interruption and the
W&B run keeps its id (``wandb sync`` puts both parts into one run), in place of starting them over."""
from __future__ import annotations

import csv
from pathlib import Path

import pytest
from helpers import FAST, Interrupt
from wandb_reader import metric, read_run

import transferlab
from transferlab import runs

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def rows(run_dir: Path) -> list[dict]:
    with open(run_dir / "csv" / "metrics.csv", newline="") as f:
        return [{k: v for k, v in row.items() if v} for row in csv.DictReader(f)]


def test_resume_continues_the_csv_and_the_wandb_run_of_the_interrupted_run(tmp_path):
    run_dir = tmp_path / "run"
    overrides = [*FAST, "source=none", "logger=many", "trainer.max_epochs=2"]
    with pytest.raises(RuntimeError, match="interrupted by the test"):
        transferlab.train(*overrides, run_dir=run_dir, callbacks=[Interrupt()])
    before = rows(run_dir)
    (first,) = run_dir.glob("wandb/offline-run-*/run-*.wandb")
    assert sorted(runs.read_history(run_dir, "val/acc")) == [0]

    result = transferlab.train(f"resume={run_dir}")
    assert result.metrics["epochs"] == 2
    after = rows(run_dir)
    assert after[:len(before)] == before  # the interrupted part of the curve, unchanged, first
    assert sorted(runs.read_history(run_dir, "val/acc")) == [0, 1]

    second = [p for p in run_dir.glob("wandb/offline-run-*/run-*.wandb") if p != first]
    assert len(second) == 1
    old, new = read_run(first), read_run(second[0])
    assert new["run"]["id"] == old["run"]["id"]  # one W&B run, in two parts
    assert len(metric(old["history"], "val/acc")) == 1 and len(metric(new["history"], "val/acc")) == 1
    assert new["exited"] and new["exit_code"] == 0
