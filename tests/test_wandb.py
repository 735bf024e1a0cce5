"""W&B tracking, read back from the offline ``.wandb`` file a real ``tl-train`` run leaves behind.

Two runs share the module (one per strategy and seed, in the same process, as a multirun's jobs are);
every assertion reads what W&B recorded through ``wandb_reader``, not what the code meant to log.
"""
from __future__ import annotations

import csv
import math
import os

import pytest
import yaml
from helpers import train
from wandb_reader import WandbFileError, metric, read_records, read_run

EPOCHS = 3  # trainer.max_epochs in helpers.FAST


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two consecutive runs with W&B (csv + wandb), in this process: ``first`` then ``second``."""
    root = tmp_path_factory.mktemp("wandb_runs")
    out = {}
    for key, overrides in (("first", []), ("second", ["strategy=linear_probe", "seed=7"])):
        run_dir = root / key
        metrics = train(run_dir, "logger=many", *overrides)
        out[key] = {"dir": run_dir, "metrics": metrics, "wandb": read_run(run_dir)}
    return out


@pytest.fixture(scope="module")
def first(runs):
    return runs["first"]


def _unresolved(obj, path=""):
    """Paths of every string that still holds an OmegaConf interpolation."""
    if isinstance(obj, dict):
        return [p for k, v in obj.items() for p in _unresolved(v, f"{path}.{k}" if path else str(k))]
    if isinstance(obj, list):
        return [p for i, v in enumerate(obj) for p in _unresolved(v, f"{path}[{i}]")]
    return [path] if isinstance(obj, str) and "${" in obj else []


def _csv_column(run_dir, key):
    with open(run_dir / "csv" / "metrics.csv", newline="") as f:
        return [float(row[key]) for row in csv.DictReader(f) if row.get(key)]


def test_reader_reads_multi_block_files_and_rejects_corruption(tmp_path):
    """The reader on a file wandb itself wrote: records split over blocks (FIRST/MIDDLE/LAST chunks)."""
    import wandb

    config = {"blob": "x" * 70_000, "n": {"a": [1, None]}}  # one record over 2 blocks
    run = wandb.init(project="reader", name="big", dir=str(tmp_path), config=config)
    try:
        for step in range(300):
            run.log({"v": step, "w/x": step / 2})
    finally:
        wandb.finish()
    wb = read_run(tmp_path)
    assert wb["file"].stat().st_size > 2 * 32 * 1024  # several blocks
    assert wb["run"]["name"] == "big" and wb["exited"] and wb["exit_code"] == 0
    assert len(wb["config"]["blob"]) == 70_000 and wb["config"]["n"] == {"a": [1, None]}
    assert metric(wb["history"], "v") == list(range(300)) and wb["history"][-1]["w/x"] == 149.5
    assert wb["summary"]["v"] == 299
    data = bytearray(wb["file"].read_bytes())
    data[40_000] ^= 0xFF
    broken = tmp_path / "broken.wandb"
    broken.write_bytes(bytes(data))
    with pytest.raises(WandbFileError, match="checksum"):
        read_run(broken, timeout=0)


def test_offline_run_file_is_readable(first):
    wandb_file = first["wandb"]["file"]
    # offline mode: wandb writes offline-run-<time>-<id> (an online run would be run-<time>-<id>)
    assert wandb_file.parent.name.startswith("offline-run-")
    assert wandb_file.parent.parent == first["dir"] / "wandb"  # inside the run directory
    assert wandb_file.name == f"run-{first['wandb']['run']['id']}.wandb"
    kinds = [r.WhichOneof("record_type") for r in read_records(wandb_file)]
    assert kinds[0] == "header" and "run" in kinds


def test_config_is_fully_resolved(first):
    config = first["wandb"]["config"]
    assert config["model"]["name"] == "test_resnet"
    assert config["strategy"]["label"] == "finetune"
    assert config["seed"] == 42
    assert config["trainer"]["max_epochs"] == EPOCHS
    assert config["experiment_name"] == "digits5-9_10shot_finetune"
    assert config["logger"]["wandb"]["name"] == "finetune-test_resnet-digits5-9_10shot-s42"
    assert _unresolved(config) == []
    # exactly the config the run directory holds (config.yaml is the resolved config)
    assert config == yaml.safe_load((first["dir"] / "config.yaml").read_text())


def test_history_has_every_epoch(first):
    history = first["wandb"]["history"]
    val_acc = metric(history, "val/acc")
    assert len(val_acc) == EPOCHS
    assert all(isinstance(v, float) and 0 <= v <= 1 for v in val_acc)
    assert [row["epoch"] for row in history if "val/acc" in row] == list(range(EPOCHS))
    assert metric(history, "train/loss") and all(math.isfinite(v) for v in metric(history, "train/loss"))
    for key in ("val/loss", "val/f1", "test/acc"):
        assert metric(history, key), f"{key} missing from the W&B history"
    # W&B and the CSV logger saw the same values
    assert val_acc == pytest.approx(_csv_column(first["dir"], "val/acc"))


def test_summary_matches_metrics_json(first):
    summary, metrics = first["wandb"]["summary"], first["metrics"]
    for key in ("test/acc", "test/f1", "val/acc_best"):
        assert summary[key] == pytest.approx(metrics[key]), key
    assert metrics["val/acc_best"] == pytest.approx(max(metric(first["wandb"]["history"], "val/acc")))


def test_run_name_group_job_type_tags(first):
    run, config, m = first["wandb"]["run"], first["wandb"]["config"], first["metrics"]
    assert run["name"] == f"{m['strategy']}-{m['model']}-{m['data']}-s{m['seed']}"
    assert run["name"] == "finetune-test_resnet-digits5-9_10shot-s42"
    assert run["project"] == "transferlab"
    assert run["group"] == config["experiment_name"]
    assert run["job_type"] == config["strategy"]["label"] == "finetune"
    assert {"finetune", "test_resnet", "digits5-9_10shot"} <= set(run["tags"])


def test_run_was_finished(first):
    assert first["wandb"]["exited"]
    assert first["wandb"]["exit_code"] == 0


def test_each_run_is_its_own_wandb_run(runs):
    a, b = runs["first"]["wandb"], runs["second"]["wandb"]
    assert a["file"] != b["file"] and a["run"]["id"] != b["run"]["id"]
    assert b["file"].is_relative_to(runs["second"]["dir"])
    assert b["run"]["name"] == "linear_probe-test_resnet-digits5-9_10shot-s7"
    assert b["run"]["job_type"] == "linear_probe"
    assert b["run"]["group"] == b["config"]["experiment_name"] == "digits5-9_10shot_linear_probe"
    assert b["config"]["seed"] == 7 and b["config"]["strategy"]["label"] == "linear_probe"
    for w in (a, b):  # nothing of one run leaked into the other
        assert w["exited"]
        assert len(metric(w["history"], "val/acc")) == EPOCHS
        assert len(metric(w["history"], "test/acc")) == 1


def test_wandb_mode_defaults_to_offline(monkeypatch, tmp_path):
    from transferlab import tracking

    monkeypatch.delenv("WANDB_MODE", raising=False)
    tracking.create_loggers({}, tmp_path)
    assert os.environ["WANDB_MODE"] == "offline"
    monkeypatch.setenv("WANDB_MODE", "disabled")  # a mode the user chose is kept
    tracking.create_loggers({}, tmp_path)
    assert os.environ["WANDB_MODE"] == "disabled"


def test_failed_job_does_not_take_over_the_next_jobs_wandb_run(tmp_path):
    import wandb

    try:
        # fails inside trainer.fit, after the W&B run has started and the config was logged
        with pytest.raises(Exception, match="missing.ckpt"):
            train(tmp_path / "failed", "logger=many", f"ckpt_path={tmp_path / 'missing.ckpt'}")
        train(tmp_path / "next", "logger=many", "seed=7")
    finally:
        if wandb.run is not None:  # never leave a run open for other tests
            wandb.finish()
    failed = read_run(tmp_path / "failed")
    assert failed["exited"] and failed["exit_code"] != 0, "the failed job's W&B run was not finished as failed"
    assert metric(failed["history"], "val/acc") == [], "the next job logged into the failed job's W&B run"
    assert list((tmp_path / "next").glob("wandb/offline-run-*/run-*.wandb")), "the next job has no W&B run"
    nxt = read_run(tmp_path / "next")
    assert nxt["run"]["name"] == "finetune-test_resnet-digits5-9_10shot-s7"
    assert len(metric(nxt["history"], "val/acc")) == EPOCHS
