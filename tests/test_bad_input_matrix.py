"""Bad input, as a user types it: every console script, one table of wrong values and broken files.

For each case the command must exit non-zero, print a message on stderr that names the bad value,
show no Python traceback (a traceback means transferlab did not recognise the mistake as the user's),
and leave no ``metrics.json`` behind.

Each case runs its console script's ``main()`` in this process (``helpers.cli``: argv, working folder,
captured stdout/stderr, the exit status of ``SystemExit``); that the same refusal reaches a user as a
process's exit status with no traceback is tests/test_console.py's. The module fixture runs every
selected case up front and each parametrized test checks one result. The files the cases need (images,
a CSV manifest, a real transferlab checkpoint, a timm checkpoint of another architecture, a truncated
checkpoint, a finished run with broken files) are written once into a temporary folder.
"""
from __future__ import annotations

import csv
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from helpers import cli, train
from PIL import Image

pytestmark = pytest.mark.slow

# Every tl-train case: no source run, nothing but CSV logs, one epoch if it ever got that far.
TRAIN = ["source=none", "logger=csv", "trainer.max_epochs=1", "trainer.enable_progress_bar=false"]
IMAGES = ["model=tiny", "data.input_size=32", "data.num_workers=0", "data.batch_size=8"]
ONE_THREAD = {"OMP_NUM_THREADS": "1"}


@dataclass
class Case:
    command: str
    args: list[str]          # "{f}" is formatted with the fixture files' folder
    says: list[str]          # each must appear in stderr ("{f}" formatted too)
    train_args: bool = True  # tl-train cases get TRAIN (and an output dir of their own)
    bug: str | None = None   # a known product bug: the case is xfail(strict=True)


CASES = {
    # --- wrong types and out-of-range numbers in overrides -------------------------------------------
    "lr_not_a_number": Case("tl-train", ["optimizer.lr=abc"], ["optimizer.lr='abc'", "positive number"]),
    "lr_zero": Case("tl-train", ["optimizer.lr=0"], ["optimizer.lr=0 ", "positive number"]),
    "lr_negative": Case("tl-train", ["optimizer.lr=-0.01"], ["optimizer.lr=-0.01", "positive number"]),
    "batch_size_zero": Case("tl-train", ["data.batch_size=0"], ["data.batch_size=0 ", "positive integer"]),
    "batch_size_negative": Case("tl-train", ["data.batch_size=-4"], ["data.batch_size=-4", "positive integer"]),
    "epochs_zero": Case("tl-train", ["trainer.max_epochs=0"], ["trainer.max_epochs=0 ", "positive integer"]),
    "epochs_negative": Case("tl-train", ["trainer.max_epochs=-3"], ["trainer.max_epochs=-3", "positive integer"]),
    "seed_not_a_number": Case("tl-train", ["seed=abc"], ["seed='abc'", "an integer"]),
    "warmup_negative": Case("tl-train", ["scheduler.warmup_epochs=-1"], ["scheduler.warmup_epochs=-1"]),
    "unknown_key": Case("tl-train", ["optimizer.lrr=0.1"], ["optimizer.lrr"]),
    "head_hidden_negative": Case("tl-train", ["model.head.hidden=-5"], ["model.head.hidden=-5", "integer >= 0"]),
    "validation_never_runs": Case("tl-train", ["trainer.check_val_every_n_epoch=5"],
                                  ["trainer.check_val_every_n_epoch=5", "never validate"]),
    # a choice the config alone shows wrong fails before the source run would train
    "loss_weighting_unknown_with_source": Case("tl-train", ["source=digits", "multitask.loss_weighting.kind=foo"],
                                               ["unknown loss weighting 'foo'", "fixed, uncertainty"]),
    # --- run directories ---------------------------------------------------------------------------
    "run_dir_holds_a_finished_run": Case("tl-train", ["hydra.run.dir={f}/run"],
                                         ["{f}/run", "already holds a finished run"]),
    "run_dir_holds_an_unfinished_run": Case("tl-train", ["hydra.run.dir={f}/run_unfinished"],
                                            ["{f}/run_unfinished", "unfinished run", "resume={f}/run_unfinished"]),
    "resume_with_overrides": Case("tl-train", ["resume={f}/run_unfinished", "trainer.max_epochs=2",
                                               "optimizer.lr=0.5"],
                                  ["trainer.max_epochs=2 optimizer.lr=0.5", "would not apply"], train_args=False),
    "run_dir_unwritable": Case("tl-train", ["hydra.run.dir=/proc/transferlab-run"],
                               ["cannot write the run directory '/proc/transferlab-run'"]),
    "experiment_name_too_long": Case("tl-train", ["experiment_name=" + "x" * 300],
                                     ["cannot write the run directory", "File name too long",
                                      "shorter experiment_name"]),
    # --- unknown names ----------------------------------------------------------------------------
    "unknown_model_name": Case("tl-train", ["model.name=resnet_does_not_exist"],
                               ["unknown model 'resnet_does_not_exist'"]),
    "unknown_model_option": Case("tl-train", ["model=resnet9000"], ["model/resnet9000"]),
    "unknown_strategy": Case("tl-train", ["strategy=half_frozen"], ["strategy/half_frozen"]),
    "unknown_bn_policy": Case("tl-train", ["strategy.bn=sometimes"], ["strategy.bn='sometimes'", "train, frozen"]),
    "unknown_accelerator": Case("tl-train", ["trainer.accelerator=tpu"], ["tpu"]),
    "freeze_stages_beyond_depth": Case("tl-train", ["strategy=partial", "strategy.freeze_stages=42"],
                                       ["strategy.freeze_stages=42", "5 stages", "0..5"]),
    # --- data ------------------------------------------------------------------------------------
    "data_root_missing": Case("tl-train", [*IMAGES, "data=image_folder", "data.root={f}/no_such_images"],
                              ["{f}/no_such_images", "does not exist"]),
    "empty_split": Case("tl-train", [*IMAGES, "data=csv", "data.manifest={f}/no_test_rows.csv"],
                        ["test split", "is empty"]),
    "corrupt_image": Case("tl-train", [*IMAGES, "data=image_folder", "data.root={f}/corrupt"],
                          ["{f}/corrupt/dog/3.png", "cannot read image"]),
    "label_column_missing": Case("tl-train", ["data=synthetic", "tasks.main.column=texture"],
                                 ["label column 'texture'", "shape, color, size"]),
    "label_column_missing_csv": Case("tl-train", [*IMAGES, "data=csv", "data.manifest={f}/no_test_rows.csv",
                                                  "data.label_columns=[colour]"], ["colour", "label, split"]),
    # --- checkpoints -----------------------------------------------------------------------------
    "checkpoint_of_another_architecture": Case("tl-train", ["model.checkpoint={f}/test_convnext.pth"],
                                               ["{f}/test_convnext.pth", "does not match model 'test_resnet'",
                                                "mismatched"]),
    "checkpoint_truncated": Case("tl-train", ["model.checkpoint={f}/truncated.ckpt"],
                                 ["{f}/truncated.ckpt", "cannot load checkpoint"]),
    "resume_not_a_run": Case("tl-train", ["resume={f}/not_a_run"], ["{f}/not_a_run", "has no config.yaml"]),
    "eval_checkpoint_truncated": Case("tl-eval", ["ckpt_path={f}/truncated.ckpt"],
                                      ["{f}/truncated.ckpt", "cannot load checkpoint"], train_args=False),
    "eval_checkpoint_not_transferlab": Case("tl-eval", ["ckpt_path={f}/test_convnext.pth"],
                                            ["{f}/test_convnext.pth", "not a transferlab checkpoint"],
                                            train_args=False),
    "eval_data_root_missing": Case("tl-eval", ["ckpt_path={f}/run/checkpoints/last.ckpt", "data=image_folder",
                                               "data.root={f}/no_such_images"],
                                   ["{f}/no_such_images", "does not exist"], train_args=False),
    "eval_without_checkpoint": Case("tl-eval", [], ["ckpt_path"], train_args=False),
    # --- tl-report, tl-reproduce -------------------------------------------------------------------
    "report_no_runs": Case("tl-report", ["{f}/empty"], ["no transferlab runs under {f}/empty"], train_args=False),
    "report_missing_dir": Case("tl-report", ["{f}/no_such_dir"], ["{f}/no_such_dir", "is not a directory"],
                               train_args=False),
    "reproduce_not_a_run": Case("tl-reproduce", ["{f}/not_a_run"], ["{f}/not_a_run", "not a transferlab run"],
                                train_args=False),
    "reproduce_unfinished_run": Case("tl-reproduce", ["{f}/run_unfinished"], ["{f}/run_unfinished",
                                                                              "has no metrics.json"],
                                     train_args=False),
    "reproduce_corrupt_metrics": Case("tl-reproduce", ["{f}/run_corrupt_metrics"],
                                      ["{f}/run_corrupt_metrics/metrics.json"], train_args=False),
}


def write_images(folder: Path, classes=("cat", "dog", "owl"), per_class=8, size=24) -> None:
    rng = np.random.default_rng(0)
    for c in classes:
        (folder / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(folder / c / f"{i}.png")


def make_files(f: Path) -> None:
    """Everything the cases point at, under ``f``."""
    import timm
    import torch

    write_images(f / "corrupt")
    (f / "corrupt" / "dog" / "3.png").write_bytes(b"this is not a png")
    # a manifest with a label column and a split column that has train and val rows but no test rows
    write_images(f / "img", classes=("x",), per_class=12)
    with open(f / "no_test_rows.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "label", "split"])
        for i in range(12):
            w.writerow([f"img/x/{i}.png", ["round", "square"][i % 2], "val" if i >= 8 else "train"])
    (f / "empty").mkdir()
    (f / "not_a_run").mkdir()
    (f / "not_a_run" / "notes.txt").write_text("not a run\n")
    torch.save(timm.create_model("test_convnext").state_dict(), f / "test_convnext.pth")
    # a real, finished transferlab run (in this process: same code path as tl-train)
    train(f / "run", *TRAIN, fast=False)
    ckpt = (f / "run" / "checkpoints" / "last.ckpt").read_bytes()
    (f / "truncated.ckpt").write_bytes(ckpt[: len(ckpt) // 2])
    shutil.copytree(f / "run", f / "run_unfinished")
    (f / "run_unfinished" / "metrics.json").unlink()
    shutil.copytree(f / "run", f / "run_corrupt_metrics")
    (f / "run_corrupt_metrics" / "metrics.json").write_text('{"test/acc": 0.5,\n')


@pytest.fixture(scope="module")
def results(request, tmp_path_factory):
    """Run every selected case; name -> (CompletedProcess, its cwd, files dir)."""
    f = tmp_path_factory.mktemp("bad_input_files")
    make_files(f)
    selected = {item.callspec.params["name"] for item in request.session.items
                if item.module is request.module and hasattr(item, "callspec") and "name" in item.callspec.params}
    if any(item.module is request.module and item.originalname == "test_resume_on_a_directory_that_is_not_a_run_"
           "leaves_it_untouched" for item in request.session.items):
        selected.add("resume_not_a_run")

    def run(name):
        case = CASES[name]
        cwd = tmp_path_factory.mktemp(f"case_{name}")
        args = [a.format(f=f) for a in case.args]
        if case.train_args:
            args = [*TRAIN, *args, f"paths.output_dir={cwd / 'outputs'}"]
        elif case.command == "tl-eval":
            args = [*args, f"paths.output_dir={cwd / 'outputs'}"]
        return name, (cli(case.command, *args, cwd=cwd, env=ONE_THREAD, timeout=300), cwd, f)

    before = {p: p.stat().st_mtime_ns for p in f.rglob("*")}
    cases = dict(map(run, sorted(selected)))
    return {"cases": cases, "files": f, "before": before}


def case_params():
    for name, case in CASES.items():
        marks = [pytest.mark.xfail(strict=True, reason=f"BUG: {case.bug}")] if case.bug else []
        yield pytest.param(name, marks=marks, id=name)


@pytest.mark.parametrize("name", list(case_params()))
def test_bad_input_exits_nonzero_naming_the_value_without_traceback_or_metrics(results, name):
    result, cwd, f = results["cases"][name]
    case = CASES[name]
    output = result.stdout + result.stderr
    summary = f"{case.command} {' '.join(case.args)} -> exit {result.returncode}\n{result.stderr[-2500:]}"
    assert result.returncode != 0, summary
    for text in case.says:
        assert text.format(f=f) in result.stderr, summary
    assert "Traceback" not in output, summary
    assert not list(cwd.rglob("metrics.json")), summary
    # the fixture's finished runs keep their metrics.json; nothing else in the files folder gains one
    assert sorted(str(p.relative_to(f)) for p in f.rglob("metrics.json")) == [
        "run/metrics.json", "run_corrupt_metrics/metrics.json"], summary


def test_resume_on_a_directory_that_is_not_a_run_leaves_it_untouched(results):
    result, _, f = results["cases"]["resume_not_a_run"]
    assert result.returncode != 0
    assert sorted(p.name for p in (f / "not_a_run").iterdir()) == ["notes.txt"]


def test_failed_commands_did_not_touch_the_runs_they_read(results):
    """A refused tl-reproduce / tl-eval / tl-train hydra.run.dir= / resume= leaves the run it was pointed at
    as it was."""
    before, f = results["before"], results["files"]
    for path, mtime in before.items():
        if path.is_relative_to(f / "not_a_run"):
            continue  # see test_resume_on_a_directory_that_is_not_a_run_leaves_it_untouched
        assert path.exists() and path.stat().st_mtime_ns == mtime, path
    # nor wrote anything into them (Hydra's .hydra/ record of a refused command, a new checkpoint, ...)
    assert sorted(set(f.rglob("*")) - set(before)) == []
    for run in ("run", "run_unfinished", "run_corrupt_metrics"):
        assert not list(f.glob(f"{run}-reproduced-*")), run
    assert json.loads((f / "run" / "metrics.json").read_text())["test/acc"] >= 0
