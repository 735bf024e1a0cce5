"""The one run path: plan -> prepare -> build -> act -> run directory.

``tl-train``, ``tl-eval``, ``tl-reproduce``, ``tl-fuse``, source runs and the Python API all go through
here: ``prepare`` performs what the plan says must exist first (the run directory, a tokenizer, the
source run), ``build`` assembles data, tasks, model, strategy and module, and ``train`` / ``evaluate``
act and write the run directory through ``runs``; ``session`` is the config, environment and logger
life cycle every act shares. Nothing here changes the plan.
"""
from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import NamedTuple

import pytorch_lightning as pl
import torch
from pytorch_lightning import Callback
from pytorch_lightning.callbacks import ProgressBar, TQDMProgressBar
from pytorch_lightning.utilities.exceptions import MisconfigurationException

from transferlab import metrics as names
from transferlab import console, runs, tracking
from transferlab import source as sources
from transferlab.callbacks import ApplyStrategy, LearningRates, PeakMemory, RandomState, SampleCounter
from transferlab.checkpoints import StreamingCheckpointIO, create_checkpoints, merge_adapters
from transferlab.config import to_plain
from transferlab.data.datamodule import TransferDataModule, create_streams
from transferlab.errors import ConfigError
from transferlab.evaluation import confusion, per_class
from transferlab.models import create_model
from transferlab.module import TransferModule
from transferlab.optim import create_optimizer, create_scheduler
from transferlab.plan import Plan
from transferlab.redact import scrub
from transferlab.tasks import Task, create_tasks

log = logging.getLogger(__name__)


def prepare(plan: Plan, steps: bool = True, claim: bool = True) -> None:
    """What must exist before building: this run's directory (taken by a new run; other ranks join rank
    0's; ``claim=False``: a plan that only builds, writing no run), then the plan's steps in order (a
    tokenizer to train, the source run to train)."""
    if claim and not plan.resumed and console.rank_zero():  # before the Trainer settles ranks
        runs.claim(plan.run_dir)
    for step in plan.steps if steps else ():
        if not step.done():
            step.perform(train)


class Parts(NamedTuple):
    module: TransferModule
    datamodule: TransferDataModule
    eval_sets: dict[str, TransferDataModule]  # name -> its data, for the tasks on the run's own data


def build_tasks(plan: Plan) -> tuple[dict, list[Task]]:
    """The data streams of the plan's tasks and the tasks complete with their classes."""
    streams = create_streams(plan.data, plan.tasks, plan.task_data)
    classes = {s.name: streams[s.stream]["splits"]["train"].classes[s.column] for s in plan.tasks if s.reads_labels}
    return streams, create_tasks(plan.tasks, classes)


def build_model(plan: Plan, tasks: list[Task], weights: str | None = None):
    """The model of a plan: the family's backbone, a head per task, the source weights (``weights``: as
    ``models.create_model``)."""
    model = create_model(plan.model, tasks, weights, input_size=getattr(plan.data, "input_size", None))
    if plan.model.compile and (plan.trainer.get("accelerator") == "cpu" or not torch.cuda.is_available()):
        log.warning("model.compile=true on a CPU: compiling takes longer than these runs gain from it (measured "
                    "30x slower for the default experiment); it pays off on GPUs")
    return model


def build(plan: Plan, loaded=None) -> Parts:
    """Data, tasks, model, strategy and module of a plan (the model of ``loaded``, a checkpoint rebuilt
    by ``models.from_checkpoint``, when given); raises before any training starts."""
    streams, tasks = build_tasks(plan)
    strategy, epochs = plan.strategy, plan.trainer["max_epochs"]
    if loaded is not None:
        _check_classes(loaded, tasks, "data")
        model = loaded.model  # its tasks are the plan's (with their data), their classes checked the same
    else:
        if plan.regularizer.needs_source and not sources.own_weights(plan.model):
            raise ConfigError(f"regularizer={plan.regularizer.kind} pulls the backbone towards the source weights, and "
                              f"this run starts from none (strategy={strategy.label}, no source run, model.checkpoint "
                              f"and model.pretrained unset); give it source weights, or use regularizer=none or bss")
        if strategy.adapts and "fsdp" in str(plan.trainer.get("strategy", "")):
            raise ConfigError(f"strategy={strategy.label} merges its adapters into best.ckpt after fitting, which needs "
                              f"the whole model in one process, and trainer.strategy={plan.trainer['strategy']} shards "
                              f"it; use trainer=ddp (the adapters are small: DDP holds a LoRA model on each GPU)")
        # resuming with adapters: last.ckpt holds them, and fit restores every weight from it
        model = build_model(plan, tasks, "" if strategy.adapts and plan.resumed else None)
        strategy.prepare(model)  # adapters join the backbone before the optimizer, checkpoints and DDP see it
    strategy.check_fits(model, epochs)
    if plan.data.batch_size == 1 and strategy.trains_norm_statistics(model, epochs):
        raise ConfigError(f"data.batch_size=1 hands the BatchNorm layers of model '{plan.model.name}' one sample "
                          f"per batch in training mode, which they cannot normalise; valid: data.batch_size >= 2, "
                          f"or strategy.bn=frozen (or strategy=linear_probe)")
    regularizer = plan.regularizer
    module = TransferModule(
        model, tasks, plan.multitask.loss_weighting.create(tasks),
        optimizer_factory=partial(create_optimizer, cfg=plan.optimizer,
                                  stage_lr_scale=partial(strategy.lr_scale, num_stages=model.num_stages),
                                  own=strategy.own_group(), decays=regularizer.decays),
        scheduler_factory=partial(create_scheduler, cfg=plan.scheduler), monitor_task=plan.multitask.monitor,
        compile_backbone=plan.model.compile, evaluation=plan.evaluation,
        hparams={"config": scrub(to_plain(plan.config)), "tasks": [t.record() for t in tasks],
                 "family": model.family.record(model.backbone)},
        regularizer=None if loaded is not None else regularizer.create(
            model, _started_from(plan, tasks), strategy.updates, lambda n: strategy.adapts and strategy.is_adapter(n)))
    augment = any(stream["data"].augment.enabled for stream in streams.values())
    cache = strategy.caches_features(model.num_stages, epochs, augment) and not any(t.token_level for t in tasks)
    preprocessing = model.family.preprocessing(model.backbone)
    features = runs.RunDir(plan.run_dir).file(runs.FEATURES)

    def datamodule(streams, loader, store_dir):
        return TransferDataModule(
            streams, partial(model.family.create_transform, preprocessing), loader, plan.multitask.sampling,
            features_from=model.backbone if cache else None, encode=model.encode,
            precision=str(plan.trainer.get("precision", "32-true")), store_dir=store_dir,
            feature_cache=plan.config.paths.get("feature_cache"))

    eval_sets = {name: datamodule(_eval_streams(name, data, plan, tasks), data, features / f"eval_{name}")
                 for name, data in plan.eval_sets.items()}
    return Parts(module, datamodule(streams, plan.data, features), eval_sets)


def _started_from(plan: Plan, tasks: list[Task]):
    """The backbone whose weights a run began from, for L2-SP: the model's own before training, except on
    resume, where the model starts from last.ckpt and the source is the config's ``model`` again."""
    if not (plan.resumed and plan.regularizer.needs_source):
        return None
    from transferlab.models import FAMILIES

    family = FAMILIES.parse(plan.config.model, "model")
    return create_model(family, tasks, input_size=getattr(plan.data, "input_size", None)).backbone


def _check_classes(loaded, tasks: list[Task], where: str) -> None:
    """The data's classes are the checkpoint's, in its order: scores against other names are wrong."""
    trained = {t.name: t for t in loaded.tasks}
    for task in tasks:
        own = trained.get(task.name)
        if own is None:
            raise ConfigError(f"checkpoint '{loaded.path}' has no task '{task.name}'; its tasks: {', '.join(trained)}")
        if task.reads_labels and list(task.class_names) != list(own.class_names):
            raise ConfigError(f"{where} has classes {list(task.class_names)} in '{task.column}'; task '{task.name}' of "
                              f"checkpoint '{loaded.path}' was trained on {list(own.class_names)} (same names, same "
                              f"order: set data.classes=[...] to match)")


def _eval_streams(name: str, data, plan: Plan, tasks: list[Task]) -> dict:
    """An evaluation set replaces the run's own data for the tasks that read it; its classes must be theirs."""
    own = [spec for spec in plan.tasks if not spec.data]
    if not own:
        raise ConfigError(f"eval_sets.{name}: every task has data of its own; an evaluation set replaces the run's "
                          f"data, which no task reads")
    streams = create_streams(data, own, {})
    for task in tasks:
        if task.name in {s.name for s in own} and task.reads_labels:
            classes = next(iter(streams.values()))["splits"]["test"].classes[task.column]
            if list(classes) != list(task.class_names):
                raise ConfigError(f"eval_sets.{name} ({data.label}) has classes {list(classes)} in "
                                  f"'{task.column}'; task '{task.name}' was trained on {list(task.class_names)}")
    return streams


def create_trainer(plan: Plan, run_dir: Path, callbacks=(), loggers=()) -> pl.Trainer:
    kwargs = dict(plan.trainer)
    strategy = str(kwargs.get("strategy", ""))
    if "fsdp" in strategy and (kwargs.get("accelerator") == "cpu" or not torch.cuda.is_available()):
        raise ConfigError(f"trainer.strategy={kwargs['strategy']} shards the model across CUDA GPUs, and this run has "
                          f"none (accelerator={kwargs.get('accelerator')}); on CPUs use trainer=ddp "
                          f"trainer.accelerator=cpu, or trainer=cpu")
    if "fsdp" not in strategy and "deepspeed" not in strategy:  # sharded strategies save their own way
        kwargs.setdefault("plugins", [StreamingCheckpointIO()])
    callbacks = list(callbacks)
    if kwargs.get("enable_progress_bar", True) and not any(isinstance(c, ProgressBar) for c in callbacks):
        # The bar's loss readout is a device sync: once per logging interval, not at every step.
        callbacks.append(TQDMProgressBar(refresh_rate=kwargs.get("log_every_n_steps") or 50))
    try:
        return pl.Trainer(**kwargs, default_root_dir=str(run_dir), callbacks=callbacks,
                          logger=list(loggers) or False)
    except (TypeError, ValueError, ImportError, MisconfigurationException) as e:  # Lightning's checks
        chosen = ", ".join(f"trainer.{k}={kwargs.get(k)}" for k in ("accelerator", "devices", "strategy", "precision")
                           if k in kwargs)
        raise ConfigError(f"trainer config is not valid ({chosen}): {str(e).splitlines()[0]}") from None


@contextmanager
def session(run_dir: Path, loggers: dict, record: dict | None, trainer: pl.Trainer | None = None):
    """The life cycle every act shares: ``record`` (the config, when the act keeps one) and ``env.json``
    written first by rank 0, the loggers started with the config, and each logger's run ended, failed
    or not, so the next job of a sweep starts a W&B run of its own."""
    if (trainer is None or trainer.is_global_zero) and record is not None:
        folder = runs.RunDir(run_dir)
        folder.write_config(record)
        folder.write_env(tracking.environment())
    created = tracking.create_loggers(loggers, run_dir)
    if trainer is not None:
        trainer.loggers = created
    try:
        tracking.log_config(created, record if record is not None else {})
        yield created
    except BaseException as e:
        tracking.finish(created, "success" if pruned(e) else "failed")  # pruning is how a trial ends early
        raise
    tracking.finish(created)


def train(plan: Plan, callbacks: tuple[Callback, ...] = ()) -> dict:
    """Prepare, fit, test the best checkpoint, and leave a complete run directory; returns metrics.json's
    content. ``callbacks`` are added to the Trainer's (for programmatic use and tests that watch training)."""
    prepare(plan)
    run_dir = Path(plan.run_dir)
    pl.seed_everything(plan.seed, workers=True)
    module, datamodule, eval_sets = build(plan)
    best, *checkpoints = create_checkpoints(run_dir)
    counter, rates, memory = SampleCounter(), LearningRates(), PeakMemory()
    # The Trainer first: it settles this process's global rank, so only rank 0 writes files and W&B.
    trainer = create_trainer(plan, run_dir, [ApplyStrategy(plan.strategy), best, *checkpoints, counter, rates,
                                             memory, RandomState(), *_optuna_trial(plan, run_dir), *callbacks])
    config = to_plain(plan.config)
    with session(run_dir, plan.loggers, config, trainer) as loggers:
        start = time.perf_counter()
        trainer.fit(module, datamodule=datamodule, ckpt_path=plan.config.get("ckpt_path"))
        fit_seconds = time.perf_counter() - start
        learning_rates = rates.summary()  # before test: loading the best checkpoint restores callback states
        samples = trainer.strategy.reduce(torch.tensor(float(counter.samples), device=module.device), reduce_op="sum")
        trainable = sum(p.numel() for p in module.model.parameters() if p.requires_grad)
        tested = "best" if best.best_model_path else "last"
        if plan.strategy.adapts:  # test what best.ckpt holds from here on: the adapters merged
            merge_adapters(trainer, module, plan.strategy, Path(best.best_model_path or run_dir / runs.CHECKPOINTS /
                                                               runs.LAST), run_dir, rewrite=bool(best.best_model_path))
            tested = None
        tables = {}
        metrics = test(trainer, module, datamodule, eval_sets, ckpt_path=tested, tables=tables)
        metrics.update({
            names.BEST: float(module.val_acc_best), "strategy": plan.strategy.label, "model": plan.model.name,
            "data": plan.data.label, "seed": plan.seed, "epochs": trainer.current_epoch,
            "trainable_params": trainable, "total_params": sum(p.numel() for p in module.model.parameters()),
            "fit_seconds": round(fit_seconds, 3), "train_samples_per_second": round(float(samples) / fit_seconds, 2),
            "train_step_seconds": round(counter.step_seconds / max(counter.steps, 1), 5),
            "peak_memory_mb": None if memory.mb is None else round(memory.mb, 1),
            "best_checkpoint": best.best_model_path or None, **learning_rates,
        })
        for logger in loggers:  # W&B's summary and the CSV get what each group trained at
            logger.log_metrics(learning_rates, step=trainer.global_step)
        if trainer.is_global_zero:
            write_tables(run_dir, module.tasks, tables, loggers)
            runs.RunDir(run_dir).write_metrics(metrics)
    return metrics


def test(trainer, module, datamodule, eval_sets: dict, ckpt_path: str | None = None,
         tables: dict | None = None, validated: bool = False) -> dict:
    """Test split, then each evaluation set, with the same weights: ``test/...`` and ``eval/<set>/...``,
    calibration among them (its temperature fitted on the validation split first, with those weights;
    ``validated``: the caller's own validation pass just collected it, inside ``module.collecting()``).
    ``tables``, when given, receives each pass's confusion matrix per task: (split, task) -> matrix."""
    passes = [("test", module.streams, datamodule), *((names.eval_split(name), list(dm.streams), dm)
                                                      for name, dm in eval_sets.items())]
    metrics = {}
    if module.evaluation.calibration and not validated:
        with module.collecting(only=True):
            trainer.validate(module, datamodule=datamodule, ckpt_path=ckpt_path, verbose=False)
        ckpt_path = None  # the module holds those weights now: the passes below need not load them again
    for split, streams, data in passes:
        with module.testing_as(split, streams), module.collecting() as collected:
            trainer.test(module, datamodule=data, ckpt_path=ckpt_path, verbose=False)
        ckpt_path = None
        metrics.update({k: float(v) for k, v in trainer.callback_metrics.items()
                        if k.startswith(split + "/")})
        for task in module.tasks if tables is not None else ():
            if task.name in collected.get(split, {}):
                tables[split, task.name] = confusion(*collected[split][task.name], task.num_classes)
    return metrics


def write_tables(run_dir: Path, tasks: list[Task], tables: dict, loggers=()) -> None:
    """Per task and pass: the confusion matrix (CSV and figure) and per-class precision, recall, F1 and
    support by class name, in the run directory and to W&B (a table and an image, once)."""
    from transferlab.reports.figure import plot_confusion

    folder = runs.RunDir(run_dir)
    by_name = {t.name: t for t in tasks}
    for (split, name), matrix in tables.items():
        classes = list(by_name[name].class_names)
        scores = per_class(matrix)
        rows = [[c, *(round(float(v[i]), 6) for v in scores[:3]), int(scores.support[i])] for i, c in enumerate(classes)]
        folder.write_per_class(split, name, ["class", *scores._fields], rows)
        folder.write_confusion(split, name, classes, matrix.tolist())
        figure = plot_confusion(classes, matrix, folder.confusion(split, name, ".png"), f"{split}: {name}")
        tracking.log_table(loggers, f"{split}/{name}/per_class", ["class", *scores._fields], rows)
        tracking.log_image(loggers, f"{split}/{name}/confusion", figure)


def _optuna_trial(plan: Plan, run_dir: Path) -> list[Callback]:
    """A trial of an Optuna search (``optuna_trial``, set by the sweeper) reports every epoch to its study."""
    if not plan.config.get("optuna_trial"):
        return []
    from transferlab.pruning import OptunaPruning

    describe = {"strategy": plan.strategy.label, "model": plan.model.name, "data": plan.data.label, "seed": plan.seed}
    return [OptunaPruning(plan.config.optuna_trial, plan.config.objective, run_dir, describe)]


def pruned(error: BaseException) -> bool:
    """An Optuna trial stopped by its pruner: the sweeper records it as pruned, not failed."""
    from optuna import TrialPruned

    return isinstance(error, TrialPruned)


def record_failure(cfg, error: BaseException) -> None:
    """A sweep job that failed leaves failed.json (never metrics.json), so reports list it as failed."""
    from pytorch_lightning.utilities import rank_zero_only

    if rank_zero_only.rank == 0:
        from omegaconf import OmegaConf

        def pick(key):
            return OmegaConf.select(cfg, key, default=None)

        runs.RunDir(cfg.paths.run_dir).write_failed(error, {
            "strategy": pick("strategy.label"), "model": pick("model.name"), "data": pick("data.label"),
            "seed": pick("seed")})


def evaluate(plan: Plan, loaded) -> dict:
    """Test the checkpoint ``loaded`` (``models.from_checkpoint``) on ``plan.data`` (its own run's data
    unless overridden) and the plan's evaluation sets; writes metrics.json."""
    prepare(plan, steps=False)
    module, datamodule, eval_sets = build(plan, loaded)
    module.load_state_dict(loaded.state_dict, strict=False)
    trainer = create_trainer(plan, plan.run_dir)
    with session(plan.run_dir, plan.loggers, None, trainer) as loggers:
        tables = {}
        metrics = test(trainer, module, datamodule, eval_sets, tables=tables)
        metrics.update({"checkpoint": str(loaded.path), "model": plan.model.name, "data": plan.data.label})
        if trainer.is_global_zero:
            write_tables(plan.run_dir, module.tasks, tables, loggers)
            runs.RunDir(plan.run_dir).write_metrics(metrics)
    return metrics
