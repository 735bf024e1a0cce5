"""tl-train and tl-eval end to end, as a user runs them."""
from __future__ import annotations

import json

import pytest
import yaml
from helpers import FAST, FAST_SOURCE, cli, run_dirs, train

from transferlab.errors import TrainingError

METRIC_KEYS = {"test/acc", "test/f1", "test/precision", "test/recall", "val/acc_best", "strategy",
               "trainable_params", "total_params", "fit_seconds", "train_samples_per_second"}


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    """One real `tl-train` run through the console script (Hydra's own run directory)."""
    cwd = tmp_path_factory.mktemp("cli")
    result = cli("tl-train", *FAST, "logger=many", cwd=cwd)
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = run_dirs(cwd / "outputs")
    return cwd, run_dir, result


def test_run_directory_is_complete(cli_run):
    _, run_dir, result = cli_run
    assert (run_dir / ".hydra" / "config.yaml").is_file() and (run_dir / ".hydra" / "overrides.yaml").is_file()
    config_text = (run_dir / "config.yaml").read_text()
    assert "${" not in config_text  # fully resolved
    config = yaml.safe_load(config_text)
    assert config["paths"]["run_dir"] == str(run_dir) and config["model"]["name"] == "test_resnet"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert METRIC_KEYS <= metrics.keys()
    assert 0 <= metrics["test/acc"] <= 1 and metrics["trainable_params"] == metrics["total_params"]
    env = json.loads((run_dir / "env.json").read_text())
    assert {"git", "python", "packages", "device"} <= env.keys() and env["packages"]["torch"]
    assert (run_dir / "checkpoints" / "last.ckpt").is_file() and (run_dir / "checkpoints" / "best.ckpt").is_file()
    assert "val/acc" in (run_dir / "csv" / "metrics.csv").read_text().splitlines()[0]
    assert list((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))
    assert str(run_dir) in result.stdout + result.stderr and "test/acc=" in result.stdout + result.stderr


def test_tl_eval_reproduces_the_runs_test_metrics(cli_run, tmp_path):
    cwd, run_dir, _ = cli_run
    best = json.loads((run_dir / "metrics.json").read_text())
    result = cli("tl-eval", f"ckpt_path={run_dir / 'checkpoints' / 'best.ckpt'}", f"paths.output_dir={tmp_path}",
                 cwd=cwd)
    assert result.returncode == 0, result.stderr[-3000:]
    (metrics_file,) = tmp_path.rglob("metrics.json")
    evaluated = json.loads(metrics_file.read_text())
    for key in ("test/acc", "test/f1", "test/precision", "test/recall"):
        assert evaluated[key] == pytest.approx(best[key], abs=1e-6)


def test_tl_eval_on_data_with_another_class_count_is_a_clear_error(cli_run, tmp_path):
    cwd, run_dir, _ = cli_run
    result = cli("tl-eval", f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}", "data=digits",
                 f"paths.output_dir={tmp_path}", cwd=cwd)
    assert result.returncode != 0 and "data has classes ['0', '1', '2', '3', '4', '5', '6', '7', '8', '9']" in result.stderr
    assert "was trained on ['5', '6', '7', '8', '9']" in result.stderr
    assert not list(tmp_path.rglob("metrics.json"))


def test_transfer_beats_training_from_scratch_on_few_shot_digits(tmp_path):
    scratch = train(tmp_path / "scratch", *[o for o in FAST if o != FAST_SOURCE], "strategy=scratch",
                    "trainer.max_epochs=10", fast=False)
    transfer = train(tmp_path / "transfer", "strategy=finetune", "trainer.max_epochs=10")
    assert transfer["test/acc"] > scratch["test/acc"] + 0.05, (transfer["test/acc"], scratch["test/acc"])


def test_nan_loss_stops_with_the_step_named(tmp_path):
    with pytest.raises(TrainingError, match=r"loss became nan at step \d+"):
        train(tmp_path, "source=none", "optimizer=sgd", "optimizer.lr=1e30")
    assert not (tmp_path / "metrics.json").exists()


@pytest.mark.parametrize("override, message", [
    ("model=resnet9000", "Could not find 'model/resnet9000'"),
    ("model.name=resnt18", "unknown model 'resnt18'"),
    ("optimizer.lr=abc", "optimizer.lr='abc'"),
    ("data.batch_size=0", "data.batch_size=0"),
    ("trainer.max_epochs=-1", "trainer.max_epochs=-1"),
    ("data=image_folder", "data.root"),
    ("model.checkpoint=/no/such/file.ckpt", "/no/such/file.ckpt' does not exist"),
])
def test_bad_input_exits_nonzero_with_a_message_naming_the_value(tmp_path, override, message):
    result = cli("tl-train", "source=none", override, "logger=csv", cwd=tmp_path, timeout=120)
    assert result.returncode != 0
    assert message in result.stderr, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert not list(tmp_path.rglob("metrics.json"))
