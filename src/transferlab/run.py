"""The one run path: plan -> factories -> module -> trainer -> run directory.

``tl-train``, ``tl-eval``, ``tl-reproduce`` and source runs all resolve their plan with
``plan.resolve`` and assemble it with ``build`` and ``create_trainer`` here; nothing else assembles
a model, data or trainer, and nothing here changes the plan.
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
from pytorch_lightning.utilities import rank_zero_only
from pytorch_lightning.utilities.exceptions import MisconfigurationException

from transferlab import metrics as names
from transferlab import tracking
from transferlab.callbacks import LearningRates, RandomState, SampleCounter
from transferlab.checkpoints import StreamingCheckpointIO, create_checkpoints, read_checkpoint
from transferlab.config import to_plain
from transferlab.data.datamodule import TransferDataModule, create_streams
from transferlab.errors import ConfigError
from transferlab.loss_weighting import create_loss_weighting
from transferlab.models import create_model
from transferlab.module import TransferModule
from transferlab.optim import create_optimizer, create_scheduler
from transferlab.plan import resolve
from transferlab.rundir import check_unused, is_rank_zero
from transferlab.strategies import Strategy, create_strategy
from transferlab.tasks import create_tasks, stream_of, task_specs

log = logging.getLogger(__name__)


class Parts(NamedTuple):
    module: TransferModule
    datamodule: TransferDataModule
    strategy: Strategy
    eval_sets: dict[str, TransferDataModule]  # name -> its data, for the tasks on the run's own data


def build(plan) -> Parts:
    """Data, tasks, model, strategy and module of a plan; raises before any training starts."""
    monitor = plan.multitask.get("monitor")
    specs = task_specs(plan.tasks, monitor)
    streams = create_streams(plan.data, specs)
    tasks = create_tasks(specs, {name: streams[stream_of(s["data"], name)]["splits"]["train"].classes[s["label"]]
                                 for name, s in specs.items()})
    model = create_model(plan.model, tasks)
    if plan.model.get("compile") and (plan.trainer.get("accelerator") == "cpu" or not torch.cuda.is_available()):
        log.warning("model.compile=true on a CPU: compiling takes longer than these runs gain from it (measured "
                    "30x slower for the default experiment); it pays off on GPUs")
    strategy = create_strategy(plan.strategy)
    strategy.check_fits(model, plan.trainer.max_epochs)
    if plan.data.batch_size == 1 and strategy.trains_norm_statistics(model, plan.trainer.max_epochs):
        raise ConfigError(f"data.batch_size=1 hands the BatchNorm layers of model '{plan.model.name}' one sample "
                          f"per batch in training mode, which they cannot normalise; valid: data.batch_size >= 2, "
                          f"or strategy.bn=frozen (or strategy=linear_probe)")
    module = TransferModule(
        model, tasks, create_loss_weighting(plan.multitask.loss_weighting, tasks),
        optimizer_factory=partial(create_optimizer, cfg=plan.optimizer,
                                  stage_lr_scale=partial(strategy.lr_scale, num_stages=model.num_stages)),
        scheduler_factory=partial(create_scheduler, cfg=plan.scheduler), monitor_task=monitor,
        compile_backbone=bool(plan.model.get("compile")), config=tracking.scrub(to_plain(plan)))
    augment = any(stream["cfg"].augment.enabled for stream in streams.values())
    cache = strategy.caches_features(model.num_stages, plan.trainer.max_epochs, augment)
    preprocessing = model.family.preprocessing(model.backbone)
    features = Path(plan.paths.run_dir) / "features"

    def datamodule(streams, loader_cfg, store_dir):
        return TransferDataModule(
            streams, partial(model.family.create_transform, preprocessing), loader_cfg, plan.multitask.sampling,
            features_from=model.backbone if cache else None, encode=model.encode,
            precision=str(plan.trainer.get("precision", "32-true")), store_dir=store_dir,
            feature_cache=plan.paths.get("feature_cache"))

    eval_sets = {name: datamodule(_eval_streams(name, data, specs, tasks), data, features / f"eval_{name}")
                 for name, data in (plan.get("eval_sets") or {}).items()}
    return Parts(module, datamodule(streams, plan.data, features), strategy, eval_sets)


def _eval_streams(name: str, data, specs: dict, tasks) -> dict:
    """An evaluation set replaces the run's own data for the tasks that read it; its classes must be theirs."""
    own = {task: spec for task, spec in specs.items() if not spec["data"]}
    if not own:
        raise ConfigError(f"eval_sets.{name}: every task has data of its own; an evaluation set replaces the run's "
                          f"data, which no task reads")
    streams = create_streams(data, own)
    for task in tasks:
        if task.name in own:
            classes = next(iter(streams.values()))["splits"]["test"].classes[task.label]
            if list(classes) != list(task.class_names):
                raise ConfigError(f"eval_sets.{name} ({data.get('name', data.kind)}) has classes {list(classes)} in "
                                  f"'{task.label}'; task '{task.name}' was trained on {list(task.class_names)}")
    return streams


def create_trainer(plan, run_dir: Path, callbacks=(), loggers=()) -> pl.Trainer:
    kwargs = to_plain(plan.trainer)
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


def train(cfg, callbacks: tuple[Callback, ...] = (), overrides: dict | None = None) -> dict:
    """Fit, test the best checkpoint, and leave a complete run directory; returns metrics.json's content.

    ``callbacks`` are added to the Trainer's (for programmatic use and tests that watch training);
    ``overrides`` (key -> value) change ``cfg`` for this run (``plan.resolve``).
    """
    plan = resolve(cfg, overrides, train_source=train)
    run_dir = Path(plan.paths.run_dir)
    if not plan.get("resume") and is_rank_zero():  # other ranks join rank 0's directory
        check_unused(run_dir)
    pl.seed_everything(plan.seed, workers=True)
    module, datamodule, strategy, eval_sets = build(plan)
    best, *checkpoints = create_checkpoints(run_dir)
    counter, rates = SampleCounter(), LearningRates()
    # The Trainer first: it settles this process's global rank, so only rank 0 writes files and W&B.
    trainer = create_trainer(plan, run_dir, [strategy, best, *checkpoints, counter, rates, RandomState(),
                                             *_optuna_trial(plan, run_dir), *callbacks])
    config = to_plain(plan)
    if trainer.is_global_zero:
        tracking.write_yaml(run_dir / "config.yaml", config)
        tracking.write_json(run_dir / "env.json", tracking.environment())
    trainer.loggers = loggers = tracking.create_loggers(plan.logger, run_dir)
    with _finishing(loggers):
        tracking.log_config(loggers, config)
        start = time.perf_counter()
        trainer.fit(module, datamodule=datamodule, ckpt_path=plan.get("ckpt_path"))
        fit_seconds = time.perf_counter() - start
        learning_rates = rates.summary()  # before test: loading the best checkpoint restores callback states
        samples = trainer.strategy.reduce(torch.tensor(float(counter.samples), device=module.device), reduce_op="sum")
        trainable = sum(p.numel() for p in module.model.parameters() if p.requires_grad)
        tested = "best" if best.best_model_path else "last"
        metrics = test(trainer, module, datamodule, eval_sets, ckpt_path=tested)
        metrics.update({
            names.BEST: float(module.val_acc_best), "strategy": strategy.name, "model": plan.model.name,
            "data": plan.data.name, "seed": plan.seed, "epochs": trainer.current_epoch,
            "trainable_params": trainable, "total_params": sum(p.numel() for p in module.model.parameters()),
            "fit_seconds": round(fit_seconds, 3), "train_samples_per_second": round(float(samples) / fit_seconds, 2),
            "best_checkpoint": best.best_model_path or None, **learning_rates,
        })
        for logger in loggers:  # W&B's summary and the CSV get what each group trained at
            logger.log_metrics(learning_rates, step=trainer.global_step)
        if trainer.is_global_zero:
            tracking.write_json(run_dir / "metrics.json", metrics)
    return metrics


@contextmanager
def _finishing(loggers):
    """Every logger's run ends, failed or not, so the next job of a sweep starts a W&B run of its own."""
    try:
        yield
    except BaseException as e:
        tracking.finish(loggers, "success" if pruned(e) else "failed")  # pruning is how a trial ends early
        raise
    tracking.finish(loggers)


def test(trainer, module, datamodule, eval_sets: dict, ckpt_path: str | None = None) -> dict:
    """Test split, then each evaluation set, with the same weights: ``test/...`` and ``eval/<set>/...``."""
    passes = [("test", module.streams, datamodule), *((names.eval_split(name), list(dm.streams), dm)
                                                      for name, dm in eval_sets.items())]
    metrics = {}
    for split, streams, data in passes:
        with module.testing_as(split, streams):
            trainer.test(module, datamodule=data, ckpt_path=ckpt_path, verbose=False)
        metrics.update({k: float(v) for k, v in trainer.callback_metrics.items()
                        if k.startswith(split + "/")})
    return metrics


def _optuna_trial(plan, run_dir: Path) -> list[Callback]:
    """A trial of an Optuna search (``optuna_trial``, set by the sweeper) reports every epoch to its study."""
    if not plan.get("optuna_trial"):
        return []
    from transferlab.pruning import OptunaPruning

    describe = {"strategy": plan.strategy.name, "model": plan.model.name, "data": plan.data.name, "seed": plan.seed}
    return [OptunaPruning(plan.optuna_trial, plan.objective, run_dir, describe)]


def pruned(error: BaseException) -> bool:
    """An Optuna trial stopped by its pruner: the sweeper records it as pruned, not failed."""
    from optuna import TrialPruned

    return isinstance(error, TrialPruned)


def record_failure(cfg, error: BaseException) -> None:
    """A sweep job that failed leaves failed.json (never metrics.json), so reports list it as failed."""
    if rank_zero_only.rank == 0:
        tracking.write_json(Path(cfg.paths.run_dir) / "failed.json", {
            "error": f"{type(error).__name__}: {error}", "strategy": cfg.strategy.get("name"),
            "model": cfg.model.get("name"), "data": cfg.data.get("name"), "seed": cfg.get("seed")})


def evaluate(plan, ckpt_path: str, run_dir: Path) -> dict:
    """Test a checkpoint on ``plan.data`` (its own run's data unless overridden); writes metrics.json."""
    module, datamodule, _, eval_sets = build(plan)
    state = read_checkpoint(ckpt_path)["state_dict"]
    missing, unexpected = module.load_state_dict(state, strict=False)
    if [k for k in missing if not k.startswith("metrics.")] or unexpected:
        raise ConfigError(f"checkpoint '{ckpt_path}' does not fit the model built from its config "
                          f"({len(missing)} missing, {len(unexpected)} unexpected keys)")
    trainer = create_trainer(plan, run_dir)
    trainer.loggers = loggers = tracking.create_loggers(plan.logger, run_dir)
    with _finishing(loggers):
        metrics = test(trainer, module, datamodule, eval_sets)
        metrics.update({"checkpoint": str(ckpt_path), "model": plan.model.name, "data": plan.data.name})
        if trainer.is_global_zero:
            tracking.write_json(run_dir / "metrics.json", metrics)
    return metrics
