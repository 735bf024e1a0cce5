"""Multi-task transfer: one shared backbone, one head per task, weighted losses, per-task metrics.

Judged by what the parameters and gradients did, by what real runs wrote (metrics.json, the CSV log,
the W&B offline file, checkpoints), and by what ``tl-train`` / ``tl-eval`` do with bad input, as a user
runs them. Two real runs are shared by the module: ``synthetic_multilabel`` (two label columns of one
dataset, learned uncertainty weights) and ``digits_multitask`` (the digits 0-4 source task trained
jointly with few-shot digits 5-9, fixed weights, two data sources).
"""
from __future__ import annotations

import csv
import json
import math
import re

import pytest
import torch
import torch.nn.functional as F
from helpers import cli, compose, train
from pytorch_lightning import Callback
from wandb_reader import metric, read_run

from transferlab import run
from transferlab.cli import user_errors
from transferlab.errors import ConfigError
from transferlab.models.checkpoint import read_checkpoint
from transferlab.plan import resolve

SYNTHETIC = ["experiment=synthetic_multilabel", "data.num_samples=300", "trainer.max_epochs=2",
             "trainer.enable_progress_bar=false"]
DIGITS = ["experiment=digits_multitask", "trainer.max_epochs=2", "trainer.enable_progress_bar=false"]
EPOCHS = 2
METRICS = ("acc", "f1", "precision", "recall")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def synthetic_run(tmp_path_factory):
    """Shape + colour of the synthetic images, uncertainty weighting, monitor=shape, CSV + W&B."""
    run_dir = tmp_path_factory.mktemp("multitask") / "synthetic"
    metrics = train(run_dir, *SYNTHETIC, "logger=many", fast=False)
    return {"dir": run_dir, "metrics": metrics, "tasks": ("shape", "color"), "monitor": "shape"}


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    """Few-shot digits 5-9 (task main) + digits 0-4 (task source, weight 0.5), fixed weights, monitor=main."""
    run_dir = tmp_path_factory.mktemp("multitask") / "digits"
    metrics = train(run_dir, *DIGITS, "logger=csv", fast=False)
    return {"dir": run_dir, "metrics": metrics, "tasks": ("main", "source"), "monitor": "main"}


def csv_rows(run_dir) -> list[dict]:
    with open(run_dir / "csv" / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def csv_column(run_dir, key) -> list[float]:
    return [float(row[key]) for row in csv_rows(run_dir) if row.get(key)]


def state_of(ckpt_path, prefix: str) -> dict[str, torch.Tensor]:
    state = read_checkpoint(ckpt_path)["state_dict"]
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


class InitialState(Callback):
    """The module's state as built (seeded), before the first optimizer step."""

    def on_fit_start(self, trainer, pl_module):
        self.state = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}


class MustNotTrain(Callback):
    def on_fit_start(self, trainer, pl_module):
        raise AssertionError("bad input reached training; it must fail before anything is trained")


# --- one shared backbone, separate heads ------------------------------------------------------------


def test_heads_are_separate_and_the_backbone_gets_gradients_from_every_task(tmp_path):
    """One batch through the real module: each task's loss reaches the same backbone tensors and only
    its own head; the training step's loss is the weighted sum of the task losses (fixed 1.0 / 0.5)."""
    cfg = compose(*SYNTHETIC, "logger=csv", "multitask.loss_weighting.kind=fixed", "tasks.color.weight=0.5",
                  run_dir=tmp_path)
    torch.manual_seed(0)
    module, datamodule, *_ = run.build(resolve(cfg))
    model = module.model
    assert set(model.heads) == {"shape", "color"}
    assert model.heads["shape"][-1].out_features == 4 and model.heads["color"][-1].out_features == 3
    ids = {name: {id(p) for p in head.parameters()} for name, head in model.heads.items()}
    backbone_ids = {id(p) for p in model.backbone.parameters()}
    assert not ids["shape"] & ids["color"] and not (ids["shape"] | ids["color"]) & backbone_ids
    ptrs = {name: {p.data_ptr() for p in head.parameters()} for name, head in model.heads.items()}
    assert not ptrs["shape"] & ptrs["color"]  # no shared storage either

    x, labels = next(iter(datamodule.train_dataloader().iterables["data"]))
    module.train()
    label_of = {t.name: t.column for t in module.tasks}

    def grads(loss_fn):
        module.zero_grad(set_to_none=True)
        loss_fn().backward()
        return {n: None if p.grad is None else p.grad.clone() for n, p in module.named_parameters()}

    per_task = {name: grads(lambda name=name: F.cross_entropy(model(x)[name], labels[label_of[name]]))
                for name in ("shape", "color")}
    backbone_names = [n for n, _ in module.named_parameters() if n.startswith("model.backbone.")]
    assert backbone_names
    # timm's ResNets start each residual branch with its last BatchNorm scale at 0 (zero_init_last), so
    # at init only some tensors get a gradient at all; both tasks must reach exactly those same tensors.
    reached = {name: [n for n in backbone_names if g[n] is not None and g[n].abs().sum() > 0]
               for name, g in per_task.items()}
    assert reached["shape"] == reached["color"]
    assert backbone_names[0] in reached["shape"] and len(reached["shape"]) > len(backbone_names) / 2
    for name, g in per_task.items():
        own = [n for n in g if n.startswith(f"model.heads.{name}.")]
        other = [n for n in g if n.startswith("model.heads.") and n not in own]
        assert own and all(g[n] is not None and g[n].abs().sum() > 0 for n in own if n.endswith("weight"))
        assert other and all(g[n] is None or g[n].abs().sum() == 0 for n in other), f"{name}'s loss reached another head"
    stem = backbone_names[0]
    assert not torch.allclose(per_task["shape"][stem], per_task["color"][stem])  # two different signals, one tensor

    def close(a, b):
        """Equal up to float32 summation order (threads, load): the difference is tiny next to the tensor's
        own size, measured in float64 over the whole tensor rather than per element."""
        a, b = a.double(), b.double()
        return float((a - b).norm()) <= 1e-4 * max(float(a.norm()), float(b.norm())) + 1e-12

    combined = grads(lambda: module.training_step({"data": (x, labels)}, 0))
    for n in backbone_names:
        assert close(combined[n], per_task["shape"][n] + 0.5 * per_task["color"][n]), n
    for n in combined:
        if n.startswith("model.heads.shape."):
            assert close(combined[n], per_task["shape"][n]), n
        elif n.startswith("model.heads.color."):
            assert close(combined[n], 0.5 * per_task["color"][n]), n


def test_checkpoint_holds_one_backbone_and_a_head_per_task(synthetic_run):
    state = read_checkpoint(synthetic_run["dir"] / "checkpoints" / "last.ckpt")["state_dict"]
    heads = {k.split(".")[2] for k in state if k.startswith("model.heads.")}
    assert heads == {"shape", "color"}
    assert state["model.heads.shape.1.weight"].shape[0] == 4 and state["model.heads.color.1.weight"].shape[0] == 3
    backbone = [k for k in state if k.startswith("model.backbone.")]
    assert backbone and not [k for k in state if ".backbone." in k and not k.startswith("model.backbone.")]


@pytest.mark.parametrize("weighting", ["fixed", "uncertainty"])
def test_zero_weight_head_is_never_updated_while_the_shared_backbone_trains(tmp_path, weighting):
    initial = InitialState()
    cfg = compose(*SYNTHETIC, "logger=csv", f"multitask.loss_weighting.kind={weighting}", "tasks.color.weight=0",
                  run_dir=tmp_path)
    run.train(resolve(cfg), callbacks=[initial])
    before = initial.state
    for ckpt in ("last.ckpt", "best.ckpt"):
        after = read_checkpoint(tmp_path / "checkpoints" / ckpt)["state_dict"]
        color = [k for k in before if k.startswith("model.heads.color.")]
        assert color and all(torch.equal(before[k], after[k]) for k in color), f"{ckpt}: the weight-0 head changed"
        shape = [k for k in before if k.startswith("model.heads.shape.")]
        assert any(not torch.equal(before[k], after[k]) for k in shape), f"{ckpt}: the weighted head did not train"
        backbone = [k for k in before if k.startswith("model.backbone.") and k.endswith("weight")]
        changed = [k for k in backbone if not torch.equal(before[k], after[k])]
        assert len(changed) == len(backbone), f"{ckpt}: shared backbone tensors left untrained: {set(backbone) - set(changed)}"


class FinalState(Callback):
    def on_fit_end(self, trainer, pl_module):
        self.global_step = trainer.global_step
        self.state = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}


def test_last_checkpoint_holds_the_last_epoch_when_the_monitored_task_stops_improving(tmp_path):
    """The monitored task has weight 0 under a linear probe: its val/acc cannot change after epoch 0, while
    the other head trains every epoch. last.ckpt must still be the state training ended with."""
    final = FinalState()
    cfg = compose(*SYNTHETIC, "logger=csv", "strategy=linear_probe", "multitask.loss_weighting.kind=fixed",
                  "tasks.color.weight=0", "multitask.monitor=color", run_dir=tmp_path)
    run.train(resolve(cfg), callbacks=[final])
    last = read_checkpoint(tmp_path / "checkpoints" / "last.ckpt")
    assert last["global_step"] == final.global_step
    assert all(torch.equal(last["state_dict"][k], v) for k, v in final.state.items() if k.startswith("model."))


# --- loss weights -----------------------------------------------------------------------------------


def test_uncertainty_weights_change_during_training_and_are_logged_per_epoch(synthetic_run):
    run_dir = synthetic_run["dir"]
    log_vars = state_of(run_dir / "checkpoints" / "last.ckpt", "loss_weighting.log_vars.")
    assert set(log_vars) == {"shape", "color"}
    assert all(float(v) != 0.0 for v in log_vars.values()), f"log variances never moved from 0: {log_vars}"
    saved_epoch = read_checkpoint(run_dir / "checkpoints" / "last.ckpt")["epoch"]
    history = read_run(run_dir)["history"]
    for task in ("shape", "color"):
        key = f"train/{task}/loss_weight"
        by_epoch = {int(row["epoch"]): float(row[key]) for row in csv_rows(run_dir) if row.get(key)}
        logged = [by_epoch[e] for e in sorted(by_epoch)]
        assert sorted(by_epoch) == list(range(EPOCHS)), f"{key}: {by_epoch}"
        assert all(w != pytest.approx(0.5, abs=1e-7) for w in logged) and logged[0] != logged[-1]  # moved, each epoch
        # the logged effective weight is 1 / (2 sigma^2) = exp(-s) / 2 of the learned s at that epoch's end
        assert by_epoch[saved_epoch] == pytest.approx(0.5 * math.exp(-float(log_vars[task])), rel=1e-5)
        assert metric(history, key) == pytest.approx(logged, rel=1e-6)


def test_fixed_weights_are_logged_per_epoch_as_configured(digits_run):
    for task, weight in (("main", 1.0), ("source", 0.5)):
        assert csv_column(digits_run["dir"], f"train/{task}/loss_weight") == [weight] * EPOCHS
    assert not state_of(digits_run["dir"] / "checkpoints" / "last.ckpt", "loss_weighting.")


# --- per-task metrics -------------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["synthetic_run", "digits_run"])
def test_per_task_metrics_and_the_monitored_task_in_metrics_json_and_csv(request, which):
    r = request.getfixturevalue(which)
    metrics, tasks, monitor = r["metrics"], r["tasks"], r["monitor"]
    on_disk = json.loads((r["dir"] / "metrics.json").read_text())
    assert on_disk == metrics
    for task in tasks:
        for m in METRICS:
            assert 0.0 <= metrics[f"test/{task}/{m}"] <= 1.0, (task, m)
    for m in (*METRICS, "ece", "nll", "ece_calibrated"):  # the monitored task also under the plain names
        assert metrics[f"test/{m}"] == metrics[f"test/{monitor}/{m}"]
    for task in tasks:  # every task's own confusion matrix; its diagonal is the task's accuracy
        counts = [[int(v) for v in row[1:]] for row in list(csv.reader((r["dir"] / f"confusion_{task}.csv").open()))[1:]]
        hits = sum(row[i] for i, row in enumerate(counts))
        assert hits / sum(map(sum, counts)) == pytest.approx(metrics[f"test/{task}/acc"], abs=1e-6), task
    rows = csv_rows(r["dir"])
    val_rows = [row for row in rows if row.get(f"val/{monitor}/acc")]
    assert len(val_rows) == EPOCHS
    for row in val_rows:
        assert all(row.get(f"val/{task}/{m}") for task in tasks for m in METRICS), row
        assert float(row["val/acc"]) == float(row[f"val/{monitor}/acc"])
    assert metrics["val/acc_best"] == pytest.approx(max(float(row[f"val/{monitor}/acc"]) for row in val_rows))
    assert all(csv_column(r["dir"], f"train/{task}/loss") for task in tasks)


def test_per_task_metrics_in_the_wandb_offline_file(synthetic_run):
    recorded = read_run(synthetic_run["dir"])
    assert recorded["exited"]
    history, summary, metrics = recorded["history"], recorded["summary"], synthetic_run["metrics"]
    for task in synthetic_run["tasks"]:
        for m in METRICS:
            assert len(metric(history, f"val/{task}/{m}")) == EPOCHS, f"val/{task}/{m}"
            assert summary[f"test/{task}/{m}"] == pytest.approx(metrics[f"test/{task}/{m}"], abs=1e-6)
        assert len(metric(history, f"train/{task}/loss_weight")) == EPOCHS
    assert metric(history, "val/acc") == pytest.approx(metric(history, "val/shape/acc"))
    assert summary["test/acc"] == pytest.approx(metrics["test/shape/acc"], abs=1e-6)
    declared = {name for name, spec in recorded["config"]["tasks"].items() if spec is not None}  # main: null = dropped
    assert declared == {"shape", "color"}


# --- the checkpoint: tl-eval and transfer ------------------------------------------------------------


@pytest.mark.slow
def test_tl_eval_evaluates_every_task_of_a_multitask_checkpoint(digits_run, tmp_path):
    best = digits_run["dir"] / "checkpoints" / "best.ckpt"
    result = cli("tl-eval", f"ckpt_path={best}", f"paths.output_dir={tmp_path / 'out'}", cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    (metrics_file,) = (tmp_path / "out").rglob("metrics.json")
    evaluated = json.loads(metrics_file.read_text())
    for task in digits_run["tasks"]:
        for m in METRICS:
            key = f"test/{task}/{m}"
            assert evaluated[key] == pytest.approx(digits_run["metrics"][key], abs=1e-6), key
    assert evaluated["test/acc"] == pytest.approx(evaluated["test/main/acc"])  # the monitored task


def test_tl_eval_path_evaluates_every_task_in_process(synthetic_run, tmp_path):
    from transferlab.api import evaluation_plan
    from transferlab.config import compose_config, set_value
    from transferlab.models import from_checkpoint

    best = synthetic_run["dir"] / "checkpoints" / "best.ckpt"
    eval_cfg = compose_config([f"ckpt_path={best}"], config_name="eval")  # tl-eval's own config: data=null
    set_value(eval_cfg, "paths.run_dir", str(tmp_path))
    loaded = from_checkpoint(best)
    evaluated = run.evaluate(evaluation_plan(eval_cfg, loaded), loaded)
    for task in synthetic_run["tasks"]:
        for m in METRICS:
            key = f"test/{task}/{m}"
            assert evaluated[key] == pytest.approx(synthetic_run["metrics"][key], abs=1e-6), key


@pytest.mark.parametrize("data, classes", [("digits_fewshot", 5), ("digits", 10)])
def test_multitask_checkpoint_backbone_is_loaded_by_a_single_task_run(digits_run, tmp_path, data, classes):
    best = digits_run["dir"] / "checkpoints" / "best.ckpt"
    cfg = compose(f"data={data}", "source=none", "logger=csv", f"model.checkpoint={best}", run_dir=tmp_path)
    module, *_ = run.build(resolve(cfg))
    source_backbone = state_of(best, "model.backbone.")
    own = module.model.backbone.state_dict()
    assert own.keys() == source_backbone.keys()
    assert all(torch.equal(own[k], source_backbone[k]) for k in own)  # BatchNorm statistics included
    assert set(module.model.heads) == {"main"}  # the auxiliary source head is not carried over
    head = module.model.heads["main"][-1]
    assert head.out_features == classes
    if classes == 5:  # same task name, same classes: its head comes along too
        assert torch.equal(head.weight, read_checkpoint(best)["state_dict"]["model.heads.main.1.weight"])


def test_multitask_checkpoint_is_the_source_of_a_single_task_transfer(digits_run, tmp_path):
    best = digits_run["dir"] / "checkpoints" / "best.ckpt"
    metrics = train(tmp_path, "source=none", f"model.checkpoint={best}", "strategy=linear_probe",
                    "trainer.max_epochs=1", "trainer.enable_progress_bar=false", "logger=csv", fast=False)
    assert "test/acc" in metrics and not [k for k in metrics if k.startswith("test/main/")]  # single-task names
    source_backbone, after = state_of(best, "model.backbone."), state_of(tmp_path / "checkpoints" / "last.ckpt",
                                                                         "model.backbone.")
    assert after.keys() == source_backbone.keys()
    assert all(torch.equal(after[k], source_backbone[k]) for k in after)  # linear probe on the reused backbone
    assert metrics["test/acc"] > 0.5  # the transferred features carry the few-shot task (5 classes)


# --- bad input --------------------------------------------------------------------------------------


@pytest.mark.parametrize("base, overrides, message", [
    pytest.param(SYNTHETIC, ["tasks.color.column=texture"],
                 r"task 'color' reads label column 'texture'.*shape, color, size", id="unknown-label-column"),
    pytest.param(DIGITS, ["tasks.main.column=texture"], r"label column 'texture'",
                 id="unknown-label-column-with-class-subset"),
    pytest.param(SYNTHETIC, ["tasks.color.weight=-1"], r"task 'color' has weight -1", id="negative-weight"),
    pytest.param(DIGITS, ["multitask.source_weight=-0.5"], r"task 'source' has weight -0.5",
                 id="negative-source-weight"),
    pytest.param(SYNTHETIC, ["tasks.color.weight=0", "tasks.shape.weight=0"], r"all task weights are zero",
                 id="all-zero-weights"),
    pytest.param(SYNTHETIC, ["multitask.monitor=texture"], r"'texture' is not a declared task; declared: shape, color",
                 id="undeclared-monitor"),
    pytest.param(DIGITS, ["multitask.monitor=shape"], r"'shape' is not a declared task; declared: main, source",
                 id="undeclared-monitor-with-source-task"),
])
def test_bad_multitask_input_fails_before_training_with_a_clear_error(tmp_path, capsys, base, overrides, message):
    """The tl-train path in process: ``user_errors`` turns the error into ``error: ...`` and a non-zero exit."""
    cfg = compose(*base, "logger=csv", *overrides, run_dir=tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        with user_errors():
            run.train(resolve(cfg), callbacks=[MustNotTrain()])
    assert exit_info.value.code not in (0, None)
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and re.search(message, errors[0]), err
    assert not (tmp_path / "metrics.json").exists()


@pytest.mark.parametrize("weight", ["nan", "inf"])
def test_non_finite_weight_is_a_clear_error(tmp_path, weight):
    cfg = compose(*SYNTHETIC, "logger=csv", f"tasks.color.weight={weight}", run_dir=tmp_path)
    with pytest.raises(ConfigError, match=rf"task 'color' has weight {weight}"):
        run.train(resolve(cfg), callbacks=[MustNotTrain()])


def test_a_declared_task_named_like_the_joint_source_task_is_a_clear_error(tmp_path):
    cfg = compose(*DIGITS, "logger=csv", "+tasks.source.column=label", "+tasks.source.weight=2", run_dir=tmp_path)
    with pytest.raises(ConfigError, match=r"'source'"):
        run.train(resolve(cfg), callbacks=[MustNotTrain()])


@pytest.mark.slow
def test_tl_train_exits_nonzero_for_a_missing_label_column(tmp_path):
    result = cli("tl-train", *SYNTHETIC, "logger=csv", "tasks.color.column=texture", cwd=tmp_path, timeout=300)
    assert result.returncode != 0
    assert "task 'color' reads label column 'texture'" in result.stderr, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert not list(tmp_path.rglob("metrics.json"))


DUPLICATE_TASKS = """\
# @package _global_
defaults:
  - override /data: synthetic
  - override /source: none
tasks:
  main: null
  shape:
    label: shape
  shape:
    label: color
"""


@pytest.mark.slow
def test_two_tasks_with_the_same_name_fail_clearly(tmp_path):
    conf = tmp_path / "conf"
    (conf / "experiment").mkdir(parents=True)
    (conf / "experiment" / "dup_tasks.yaml").write_text(DUPLICATE_TASKS)
    result = cli("tl-train", f"hydra.searchpath=[file://{conf}]", "experiment=dup_tasks", "logger=csv",
                 "trainer.max_epochs=1", "trainer.enable_progress_bar=false", cwd=tmp_path, timeout=300)
    assert result.returncode != 0
    assert re.search(r"duplicate key\W+shape", result.stderr), result.stderr[-2000:]
    assert not list(tmp_path.rglob("metrics.json")) and not list(tmp_path.rglob("*.ckpt"))
