"""What a person sees at the console: one line per sweep job, a run's choices, directory and metrics,
no Lightning banners (they stay in <run_dir>/train.log, and verbose=true brings them back); and
answers that need only the config (--help, --cfg, a misspelt option or choice, a bad value) come
before torch, timm or Lightning is imported."""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from helpers import ONE_THREAD, process

from transferlab import CONF_DIR

CONF = Path(CONF_DIR)

QUICK = ["source=none", "logger=csv", "trainer.max_epochs=1", "data.train_per_class=10"]
# What Lightning and Python print by themselves; none of it belongs on a default console.
BANNERS = ("GPU available", "TPU available", "LOCAL_RANK", "Tip:", "litlogger", "Seed set to", "PossibleUserWarning",
           "does not have many workers", "smaller than the logging interval", "Warning:", "wandb: WARNING")
HEAVY = ("torch", "timm", "pytorch_lightning", "lightning", "torchvision")


def tl(command: str, *args, cwd: Path, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """A console script run as a user runs it: Python's warnings on (the suite turns them off)."""
    return process(command, *args, cwd=cwd, env={**ONE_THREAD, **(env or {})}, timeout=timeout,
                   drop=("PYTHONWARNINGS",))


def banners(text: str) -> list[str]:
    return [b for b in BANNERS if b in text]


@pytest.mark.slow
def test_a_sweep_prints_one_line_per_job_and_each_train_log_keeps_the_detail(tmp_path):
    result = tl("tl-train", "-m", *QUICK, "seed=1,2,3", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    output = result.stdout + result.stderr
    before_report = output.split("# transferlab report")[0].strip().splitlines()
    header, *jobs = before_report
    assert header.startswith("sweep: 3 jobs into outputs/multirun/"), output[-3000:]
    assert len(jobs) == 3, output[-3000:]  # nothing else: no banner, no progress bar, no warning
    for n, line in enumerate(jobs, 1):
        assert re.fullmatch(rf"\[{n}/3\] seed={n}  test/acc=0\.\d{{4}}  test/f1=0\.\d{{4}}  val/acc_best=0\.\d{{4}}  "
                            rf"\(\d+\.\d s(, about \d+\.\d (s|min) left)?\)", line), line
    assert "| **finetune** (best) |" in output  # the report table at the end
    assert banners(output) == []
    logs = sorted(tmp_path.glob("outputs/multirun/*/*/*/train.log"))
    assert len(logs) == 3
    first = logs[0].read_text()
    for detail in ("Seed set to 1", "GPU available", "PossibleUserWarning", "[1/3] seed=1"):
        assert detail in first, first[-3000:]


def test_time_left_counts_each_job_still_to_run_at_the_pace_of_its_own_kind():
    from omegaconf import OmegaConf

    from transferlab.cli.callbacks import JobClock, _kind, _sweep_shape

    # experiment=compare's order: seed first, so every strategy runs once before any repeats
    config = OmegaConf.create({"hydra": {
        "sweeper": {"_target_": "hydra._internal.core_plugins.basic_sweeper.BasicSweeper",
                    "params": {"seed": "1,2", "strategy": "linear_probe,multitask"}},
        "overrides": {"task": ["trainer.enable_progress_bar=false", "+optimizer.lr=0.1,0.2"]}}})
    total, swept, kinds = _sweep_shape(config)
    assert (total, swept) == (8, {"seed", "strategy", "optimizer.lr"})
    clock = JobClock(kinds)
    clock.finished(_kind(["seed=1", "strategy=linear_probe", "+optimizer.lr=0.1"]), 5.0)
    assert clock.left() == 7 * 5.0  # no other kind seen yet: every job at the pace so far
    clock.finished(_kind(["seed=1", "strategy=multitask", "+optimizer.lr=0.1"]), 55.0)
    assert clock.left() == 5.0 + 55.0 + 4 * 30.0  # one of each seen kind, four jobs of unseen kinds at the mean
    assert JobClock(None).left() is None  # a sweeper that decides as it goes (Optuna): no kinds to go by


@pytest.fixture(scope="module")
def single_run(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("single")
    return cwd, tl("tl-train", *[o for o in QUICK if o != "logger=csv"], cwd=cwd)  # the default loggers, W&B too


def test_a_single_run_prints_its_choices_a_progress_bar_its_directory_and_headline_metrics(single_run):
    cwd, result = single_run
    assert result.returncode == 0, result.stderr[-3000:]
    output = result.stdout + result.stderr
    (run_dir,) = [p.parent for p in cwd.glob("outputs/runs/*/*/metrics.json")]
    lines = result.stdout.splitlines()
    assert re.fullmatch(r"model=test_resnet \(random init\)  data=digits5-9_10shot  strategy=finetune  "
                        r"optimizer=adamw lr=0\.003 wd=0\.05  scheduler=cosine  epochs=1  seed=42  .*logger=csv,wandb",
                        lines[0]), lines[0]
    assert "Epoch 0: 100%" in output  # Lightning's bar
    assert f"run directory: {run_dir.resolve()}" in lines or f"run directory: {run_dir}" in lines, output[-2000:]
    assert re.search(r"^test/acc=0\.\d{4}  test/f1=0\.\d{4}  val/acc_best=0\.\d{4}  \(finetune, ", output, re.M)
    assert banners(output) == []
    log = (run_dir / "train.log").read_text()
    assert "GPU available" in log and "Seed set to 42" in log and lines[0] in log


@pytest.mark.slow
def test_verbose_brings_the_banners_back_to_the_console(tmp_path):
    result = tl("tl-train", *QUICK, "verbose=true", "trainer.enable_progress_bar=false", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    output = result.stdout + result.stderr
    assert "GPU available" in output and "Seed set to 42" in output and "PossibleUserWarning" in output


def test_help_names_the_command_its_groups_and_where_to_read_more(capsys, monkeypatch):
    from transferlab.cli import train

    monkeypatch.setattr("sys.argv", ["tl-train", "--help"])
    train.main()
    text = capsys.readouterr().out
    assert text.startswith("usage: tl-train") and "README.md" in text and "powered by Hydra" not in text
    strategies = sorted(p.stem for p in (CONF / "strategy").glob("*.yaml") if not p.stem.startswith("_"))
    assert re.search(rf"^  strategy +{', '.join(strategies)}\b", text, re.M), text  # every public option, sorted
    assert "_images" not in text and "_timm" not in text  # the private bases are not choices


def imported(stderr: str) -> set[str]:
    """Top-level packages ``PYTHONPROFILEIMPORTTIME=1`` (``-X importtime``) saw imported."""
    return {m.group(1).strip().split(".")[0] for m in re.finditer(r"^import time:[^|]*\|[^|]*\|(.*)$", stderr, re.M)}


CONFIG_ONLY = {  # command line -> (exit status, what the output says)
    "help": (["tl-train", "--help"], 0, "config groups (group=option):"),
    "config": (["tl-train", "--cfg", "job"], 0, "strategy:"),
    "misspelt option": (["tl-train", "optimzer.lr=0.1"], 1, "Could not override 'optimzer.lr'"),
    "misspelt choice": (["tl-train", "strategy=lp-ft"], 1, "Could not find 'strategy/lp-ft'"),
    "misspelt kind": (["tl-train", "strategy.kind=lp-ft"], 2, "did you mean 'lp_ft'?"),
    "misspelt setting": (["tl-train", "+strategy.freeze_stage=2"], 2, "strategy.freeze_stage is not a setting of strategy 'finetune'; its settings are: kind, label, bn"),
    "bad value": (["tl-train", "optimizer.lr=-1"], 2, "error: optimizer.lr=-1 is not valid: it must be a positive"),
    "eval without checkpoint": (["tl-eval"], 2, "error: ckpt_path is required"),
    "fuse with a bad alpha": (["tl-fuse", "method=wise_ft", "runs=[a,b]", "fusion.alphas=[2]"], 2, "fusion.alphas=[2] is not valid: it must be a non-empty list of numbers in [0, 1]"),
    "rank with one candidate": (["tl-rank", "candidates=[{source: none}]"], 2, "error: tl-rank needs at least two candidates"),
    "predict without inputs": (["tl-predict", "ckpt_path=x.ckpt"], 2, "error: inputs is required"),
    "predict with two models": (["tl-predict", "ckpt_path=x.ckpt", "fusion=outputs/fuse/x", "inputs=a"], 2, "give exactly one model"),
    "export to an unknown format": (["tl-export", "ckpt_path=x.ckpt", "format=tflite"], 2, "unknown export format 'tflite'"),
    "report help": (["tl-report", "--help"], 0, "usage: tl-report"),
    "reproduce help": (["tl-reproduce", "--help"], 0, "usage: tl-reproduce"),
}


@pytest.mark.parametrize("case", CONFIG_ONLY)
def test_answers_the_config_alone_can_give_come_before_torch_timm_or_lightning_is_imported(tmp_path, case):
    (command, *args), status, says = CONFIG_ONLY[case]
    result = tl(command, *args, cwd=tmp_path, env={"PYTHONPROFILEIMPORTTIME": "1"})
    assert result.returncode == status, result.stdout[-2000:] + result.stderr[-3000:]
    assert says in result.stdout + result.stderr
    modules = imported(result.stderr)
    assert "hydra" in modules or command in ("tl-report", "tl-reproduce")  # the probe saw the imports
    assert not modules & set(HEAVY), f"{case} imported {sorted(modules & set(HEAVY))}"
    assert "Traceback" not in result.stderr
    assert not list(tmp_path.rglob("metrics.json"))
