"""The one run path: config -> factories -> module -> trainer -> run directory.

``tl-train``, ``tl-eval``, ``tl-reproduce`` and source runs all go through ``build`` and
``create_trainer`` here; nothing else assembles a model, data or trainer.
"""
from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ProgressBar, TQDMProgressBar
from pytorch_lightning.utilities import rank_zero_only
from pytorch_lightning.utilities.exceptions import MisconfigurationException
from timm.data import resolve_model_data_config

from transferlab import tracking
from transferlab.callbacks import RandomState, SampleCounter
from transferlab.checkpoints import StreamingCheckpointIO, create_checkpoints
from transferlab.config import load_run_config, set_value, to_plain, validate
from transferlab.data.datamodule import TransferDataModule, create_sources
from transferlab.errors import ConfigError
from transferlab.models import create_model, read_checkpoint
from transferlab.module import TransferModule
from transferlab.optim import create_optimizer, create_scheduler
from transferlab.source import prepare_source
from transferlab.strategies import create_strategy
from transferlab.tasks import add_source_task, create_loss_weighting, create_tasks

log = logging.getLogger(__name__)


def build(cfg, tasks=None):
    """Tasks, data, model, strategy and module for a config; raises before any training starts."""
    validate(cfg)
    tasks = tasks or create_tasks(cfg.tasks, cfg.multitask.get("monitor"))
    sources = create_sources(cfg.data, tasks)
    model = create_model(cfg.model, tasks)
    strategy = create_strategy(cfg.strategy)
    strategy.check(model.num_stages, cfg.trainer.max_epochs)
    module = TransferModule(
        model, tasks, create_loss_weighting(cfg.multitask.loss_weighting, tasks),
        optimizer_factory=partial(create_optimizer, cfg=cfg.optimizer,
                                  stage_lr_scale=partial(strategy.lr_scale, num_stages=model.num_stages)),
        scheduler_factory=partial(create_scheduler, cfg=cfg.scheduler),
        monitor_task=cfg.multitask.get("monitor"), config=tracking.scrub(to_plain(cfg)))
    augment = any(src["cfg"].augment.enabled for src in sources.values())
    cache = strategy.caches_features(model.num_stages, cfg.trainer.max_epochs, augment)
    module.inputs_are_features = cache
    datamodule = TransferDataModule(sources, resolve_model_data_config(model.backbone), cfg.data,
                                    cfg.multitask.sampling, features_from=model.backbone if cache else None,
                                    store_dir=Path(cfg.paths.run_dir) / "features",
                                    feature_cache=cfg.paths.get("feature_cache"))
    return module, datamodule, strategy


def create_trainer(cfg, run_dir: Path, callbacks=(), loggers=()) -> pl.Trainer:
    kwargs = to_plain(cfg.trainer)
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


def train(cfg, callbacks=()) -> dict:
    """Fit, test the best checkpoint, and leave a complete run directory; returns metrics.json's content.

    ``callbacks`` are added to the Trainer's (for programmatic use and tests that watch training).
    """
    if cfg.get("resume"):
        cfg = resume_config(cfg.resume)
    run_dir = Path(cfg.paths.run_dir)
    validate(cfg)
    create_strategy(cfg.strategy)  # a bad strategy setting fails before any source run is trained
    add_source_task(cfg)
    checkpoint = prepare_source(cfg, train)
    if checkpoint:
        set_value(cfg, "model.checkpoint", checkpoint)
    pl.seed_everything(cfg.seed, workers=True)
    module, datamodule, strategy = build(cfg)
    best, *checkpoints = create_checkpoints(run_dir)
    counter = SampleCounter()
    # The Trainer first: it settles this process's global rank, so only rank 0 writes files and W&B.
    trainer = create_trainer(cfg, run_dir, [strategy, best, *checkpoints, counter, RandomState(), *callbacks])
    config = to_plain(cfg)
    if trainer.is_global_zero:
        tracking.write_yaml(run_dir / "config.yaml", config)
        tracking.write_json(run_dir / "env.json", tracking.environment())
    trainer.loggers = loggers = tracking.create_loggers(cfg.logger, run_dir)
    with _finishing(loggers):
        tracking.log_config(loggers, config)
        start = time.perf_counter()
        trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
        fit_seconds = time.perf_counter() - start
        samples = trainer.strategy.reduce(torch.tensor(float(counter.samples), device=module.device), reduce_op="sum")
        trainable = sum(p.numel() for p in module.model.parameters() if p.requires_grad)
        trainer.test(module, datamodule=datamodule, ckpt_path="best" if best.best_model_path else "last",
                     verbose=False)
        metrics = _test_metrics(trainer)
        metrics.update({
            "val/acc_best": float(module.val_acc_best), "strategy": strategy.name, "model": cfg.model.name,
            "data": cfg.data.name, "seed": cfg.seed, "epochs": trainer.current_epoch,
            "trainable_params": trainable, "total_params": sum(p.numel() for p in module.model.parameters()),
            "fit_seconds": round(fit_seconds, 3), "train_samples_per_second": round(float(samples) / fit_seconds, 2),
            "best_checkpoint": best.best_model_path or None,
        })
        if trainer.is_global_zero:
            tracking.write_json(run_dir / "metrics.json", metrics)
    return metrics


@contextmanager
def _finishing(loggers):
    """Every logger's run ends, failed or not, so the next job of a sweep starts a W&B run of its own."""
    try:
        yield
    except BaseException:
        tracking.finish(loggers, "failed")
        raise
    tracking.finish(loggers)


def _test_metrics(trainer) -> dict:
    return {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("test/")}


def resume_config(run_dir):
    """The interrupted run's own config, continuing from its last checkpoint in its own directory."""
    cfg = load_run_config(run_dir)
    last = Path(run_dir) / "checkpoints" / "last.ckpt"
    if not last.is_file():
        raise ConfigError(f"cannot resume '{run_dir}': it has no checkpoints/last.ckpt (it stopped before "
                          f"the first epoch ended); start it again instead")
    if (Path(run_dir) / "metrics.json").is_file():
        raise ConfigError(f"'{run_dir}' already finished (metrics.json exists); nothing to resume")
    set_value(cfg, "ckpt_path", str(last))
    set_value(cfg, "paths.run_dir", str(Path(run_dir).resolve()))
    return cfg


def record_failure(cfg, error: BaseException) -> None:
    """A sweep job that failed leaves failed.json (never metrics.json), so reports list it as failed."""
    if rank_zero_only.rank == 0:
        tracking.write_json(Path(cfg.paths.run_dir) / "failed.json", {
            "error": f"{type(error).__name__}: {error}", "strategy": cfg.strategy.get("name"),
            "model": cfg.model.get("name"), "data": cfg.data.get("name"), "seed": cfg.get("seed")})


def evaluate(cfg, ckpt_path: str, run_dir: Path) -> dict:
    """Test a checkpoint on ``cfg.data`` (its own run's data unless overridden); writes metrics.json."""
    module, datamodule, _ = build(cfg)
    state = read_checkpoint(ckpt_path)["state_dict"]
    missing, unexpected = module.load_state_dict(state, strict=False)
    if [k for k in missing if not k.startswith("metrics.")] or unexpected:
        raise ConfigError(f"checkpoint '{ckpt_path}' does not fit the model built from its config "
                          f"({len(missing)} missing, {len(unexpected)} unexpected keys)")
    trainer = create_trainer(cfg, run_dir)
    trainer.loggers = loggers = tracking.create_loggers(cfg.logger, run_dir)
    with _finishing(loggers):
        trainer.test(module, datamodule=datamodule, verbose=False)
        metrics = _test_metrics(trainer)
        metrics.update({"checkpoint": str(ckpt_path), "model": cfg.model.name, "data": cfg.data.name})
        if trainer.is_global_zero:
            tracking.write_json(run_dir / "metrics.json", metrics)
    return metrics
