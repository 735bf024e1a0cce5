"""Run directories written before saved configs had a version (tests/fixtures/v1: commit f031665) still
work in every command that reads them: tl-eval, tl-reproduce, tl-fuse, resume= and the report.

The fixture runs were made on CPU with one thread; each test copies them before use (a command may
write beside them, never into a copy the next test reads)."""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
import yaml

import transferlab
from transferlab import runs

pytestmark = pytest.mark.usefixtures("one_torch_thread")

V1 = Path(__file__).parent / "fixtures" / "v1"


@pytest.fixture
def v1(tmp_path) -> Path:
    shutil.copytree(V1, tmp_path / "v1")
    return tmp_path / "v1"


def metrics_of(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


def test_a_v1_config_is_upgraded_on_read_and_the_file_is_left_as_it_was(v1):
    before = (v1 / "ft" / "config.yaml").read_text()
    config = runs.RunDir(v1 / "ft").read_config()
    assert config["config_version"] == runs.VERSION == 2
    assert config["strategy"]["label"] == "finetune" and "name" not in config["strategy"]
    assert config["model"]["kind"] == "timm" and "family" not in config["model"]
    assert config["optimizer"]["kind"] == "adamw" and config["data"]["label"] == "digits5-9_10shot"
    assert config["eval_sets"]["noisy"]["corruption"]["kind"] == "gaussian_noise"
    assert config["tasks"]["main"] == {"kind": "classification", "column": "label", "num_classes": None,
                                       "weight": 1.0, "data": {}}
    assert (v1 / "ft" / "config.yaml").read_text() == before


def test_tl_eval_of_a_v1_checkpoint_gives_the_test_metrics_its_run_reported(v1, tmp_path):
    ft = v1 / "ft"
    result = transferlab.evaluate(ft / "checkpoints" / "best.ckpt", run_dir=tmp_path / "eval")
    reported = metrics_of(ft)
    for key in ("test/acc", "test/f1", "eval/noisy/acc"):  # counts over the same images, the same weights
        assert result.metrics[key] == pytest.approx(reported[key], abs=1e-6), key
    assert result.metrics["test/loss"] == pytest.approx(reported["test/loss"], rel=1e-4)


def test_tl_reproduce_of_a_v1_run_matches_it(v1, tmp_path):
    from transferlab.cli.reproduce import reproduce
    from transferlab.metrics import COMPARED

    old, new, tolerance, out = reproduce(v1 / "lp", tmp_path / "again", allow_version_change=True, tolerance=None)
    assert tolerance == 0.0  # a CPU run is compared exactly
    assert {k: new[k] for k in COMPARED} == pytest.approx({k: old[k] for k in COMPARED}, abs=1e-6)
    assert yaml.safe_load((out / "config.yaml").read_text())["config_version"] == runs.VERSION


def test_tl_fuse_of_v1_runs_at_alpha_one_is_the_fine_tuned_run(v1, tmp_path):
    result = transferlab.fuse("fusion=wise_ft", f"runs=[{v1 / 'lp'},{v1 / 'ft'}]", "fusion.alphas=[0.0,1.0]",
                              "logger.wandb=null", run_dir=tmp_path / "fused")
    with open(result.run_dir / runs.CANDIDATES, newline="") as f:
        candidates = {float(c["alpha"]): c for c in csv.DictReader(f)}
    assert float(candidates[1.0]["test/acc"]) == pytest.approx(metrics_of(v1 / "ft")["test/acc"], abs=1e-6)
    assert float(candidates[0.0]["test/acc"]) == pytest.approx(metrics_of(v1 / "lp")["test/acc"], abs=1e-6)


def csv_rows(run_dir: Path) -> list[dict]:
    with open(run_dir / "csv" / "metrics.csv", newline="") as f:
        return [{k: v for k, v in row.items() if v} for row in csv.DictReader(f)]


def test_resume_of_an_interrupted_v1_run_finishes_it_and_keeps_its_learning_curve(v1):
    """The first epoch was logged before the interruption: the resumed run's CSV still holds it (Lightning's
    CSV writer deletes an existing metrics.csv when it starts), followed by the epoch trained now."""
    run_dir = v1 / "interrupted"
    before = csv_rows(run_dir)
    result = transferlab.train(f"resume={run_dir}")
    assert result.run_dir == run_dir and (run_dir / "metrics.json").is_file()
    assert result.metrics["epochs"] == 2 and result.metrics["strategy"] == "finetune"
    after = csv_rows(run_dir)
    assert after[:len(before)] == before  # the interrupted run's rows, unchanged, first
    assert sorted(runs.read_history(run_dir, "val/acc")) == [0, 1]


def test_the_report_reads_v1_and_new_runs_as_one_setting_each(v1, tmp_path):
    report = transferlab.report(v1, out=tmp_path / "report")
    assert sorted(r.status for r in report.runs) == ["finished", "finished", "incomplete"]
    assert {row.label.split(",")[0] for row in report.rows} == {"finetune", "linear_probe"}
