"""Resolve once: the composed config becomes the run's final, read-only plan.

Everything a run decides from its config is decided here, in one pass and in this order: overrides
of the caller (tl-eval, tl-reproduce), resume (the interrupted run's own config), defaults for keys
older configs lack, validation of every value and every registry name (so a typo fails in seconds,
before a source run trains), the joint source task, and the source checkpoint (trained now if it
is missing). ``run.build`` and everything after it only read the plan; config.yaml is the plan.
"""
from __future__ import annotations

import numbers
import re
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from transferlab.config import compose_config, load_run_config, set_value, to_plain
from transferlab.errors import ConfigError
from transferlab.tasks import task_specs

DEFAULTS = {"model.family": "timm"}  # keys configs written before they existed lack


def _positive_int(v):
    return isinstance(v, int) and not isinstance(v, bool) and v > 0


def _positive_number(v):
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and v > 0


def _non_negative_number(v):
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and v >= 0


def _fraction(v):
    return _non_negative_number(v) and v < 1


# key -> (check, what is valid); keys absent from a config are skipped.
SCHEMA = {
    "seed": (lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer"),
    "data.batch_size": (_positive_int, "a positive integer"),
    "data.num_workers": (lambda v: isinstance(v, int) and v >= 0, "an integer >= 0"),
    "data.train_per_class": (lambda v: v is None or _positive_int(v), "null or a positive integer"),
    "data.classes": (lambda v: v is None or (OmegaConf.is_list(v) and len({str(c) for c in v}) == len(v) > 0),
                     "null or a non-empty list of distinct classes"),
    "data.input_size": (lambda v: v is None or _positive_int(v), "null or a positive integer (pixels)"),
    "data.val_fraction": (_fraction, "a number in [0, 1)"),
    "data.test_fraction": (_fraction, "a number in [0, 1)"),
    "optimizer.lr": (_positive_number, "a positive number"),
    "optimizer.weight_decay": (_non_negative_number, "a number >= 0"),
    "optimizer.head_lr_mult": (_positive_number, "a positive number"),
    "optimizer.layer_decay": (lambda v: v is None or (_positive_number(v) and v <= 1), "null or a number in (0, 1]"),
    "optimizer.momentum": (_fraction, "a number in [0, 1)"),
    "trainer.max_epochs": (_positive_int, "a positive integer"),
    "model.drop_rate": (_fraction, "a number in [0, 1)"),
    "model.head.hidden": (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0,
                          "an integer >= 0 (0 = a linear head, >0 = the hidden width of an MLP head)"),
    "model.head.dropout": (_fraction, "a number in [0, 1)"),
    "trainer.check_val_every_n_epoch": (lambda v: v is None or _positive_int(v), "null or a positive integer"),
    "model.name": (lambda v: isinstance(v, str) and v != "", "a model name of its family"),
    "scheduler.warmup_epochs": (_non_negative_number, "a number >= 0"),
    "strategy.bn": (lambda v: v in ("train", "frozen"), "a BatchNorm policy: one of train, frozen"),
    "strategy.lp_epochs": (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0, "an integer >= 0"),
    "strategy.backbone_lr_mult": (_positive_number, "a positive number"),
    "multitask.sampling": (lambda v: v in ("max_size_cycle", "min_size", "max_size", "sequential"),
                           "a CombinedLoader mode: one of max_size_cycle, min_size, max_size, sequential"),
}


def resolve(cfg: DictConfig, overrides: dict | None = None, train_source=None) -> DictConfig:
    """The plan of one run: a resolved, read-only copy of ``cfg`` (which stays as it was).

    ``overrides``: config key -> value applied first (what tl-eval and tl-reproduce change of a saved
    config). ``train_source(plan)``: how to train a missing source run (``run.train``); without it
    the source checkpoint must already exist.
    """
    plan = OmegaConf.create(OmegaConf.to_container(cfg, resolve=False))
    for key, value in (overrides or {}).items():
        set_value(plan, key, value)
    plan = OmegaConf.create(to_plain(plan))  # interpolations resolved once, overrides' included
    if plan.get("resume"):
        plan = _resumed(plan.resume)
    for key, value in DEFAULTS.items():
        if OmegaConf.select(plan, key, default=None) is None:
            set_value(plan, key, value)
    _complete_eval_sets(plan)
    validate(plan, tasks=False)
    _add_source_task(plan)
    task_specs(plan.tasks, plan.multitask.get("monitor"))  # with the joint source task among them
    if train_source is not None:
        from transferlab.source import prepare_source

        checkpoint = prepare_source(plan, train_source)
        if checkpoint:
            set_value(plan, "model.checkpoint", checkpoint)
    OmegaConf.set_readonly(plan, True)
    return plan


def from_checkpoint(ckpt_path, overrides: dict | None = None) -> DictConfig:
    """The plan a transferlab checkpoint was trained with, its weights to come from checkpoints (no
    source run, no pretrained download, one device): what tl-eval and tl-fuse evaluate with."""
    from transferlab.checkpoints import read_checkpoint
    from transferlab.config import check_saved

    hparams = read_checkpoint(ckpt_path).get("hyper_parameters", {})
    saved = hparams.get("config")
    if not saved:
        raise ConfigError(f"'{ckpt_path}' is not a transferlab checkpoint (it holds no run config); "
                          f"to start a run from foreign weights use tl-train model.checkpoint=...")
    check_saved(saved, f"the config inside '{ckpt_path}'")
    fixed = {"model.checkpoint": None, "model.pretrained": False, "source": None, "resume": None, "ckpt_path": None,
             "trainer.devices": 1, "trainer.num_nodes": 1, "trainer.strategy": "auto"}
    for task in hparams.get("tasks", []):  # a dataset with another class count is then a clear error
        fixed[f"tasks.{task['name']}.num_classes"] = task["num_classes"]
    return resolve(OmegaConf.create(saved), {**fixed, **(overrides or {})})


def validate(cfg: DictConfig, tasks: bool = True) -> None:
    """Every value and every choice the config alone can show to be wrong: one ConfigError naming it.
    ``tasks=False`` leaves the task declarations for later (``resolve`` adds the joint source task first)."""
    missing = sorted(k for k in OmegaConf.missing_keys(cfg) if not k.startswith("hydra"))
    if missing:
        raise ConfigError(f"required value(s) not set: {', '.join(missing)}; pass them as overrides, "
                          f"e.g. {missing[0]}=...")
    for key, (ok, valid) in SCHEMA.items():
        try:
            value = OmegaConf.select(cfg, key, throw_on_missing=True, default="__absent__")
        except Exception as e:  # noqa: BLE001 - interpolation and missing-value errors
            raise ConfigError(f"config value {key} cannot be read: {e}") from None
        if value != "__absent__" and not ok(value):
            raise ConfigError(f"{key}={value!r} is not valid: it must be {valid}")
    _check_validation_interval(cfg)
    _check_choices(cfg)
    if tasks:
        task_specs(cfg.tasks, cfg.multitask.get("monitor"))


def _check_validation_interval(cfg: DictConfig) -> None:
    """Checkpoints are chosen on validation: a run that never validates has no best checkpoint to test."""
    every = OmegaConf.select(cfg, "trainer.check_val_every_n_epoch", default=None)
    epochs = OmegaConf.select(cfg, "trainer.max_epochs", default=None)
    if isinstance(every, int) and isinstance(epochs, int) and every > epochs:
        raise ConfigError(f"trainer.check_val_every_n_epoch={every} is more than trainer.max_epochs={epochs}: the run "
                          f"would never validate, so no checkpoint could be chosen; use a value <= {epochs}")


def _check_choices(cfg: DictConfig) -> None:
    """Registry names and settings, without building anything."""
    from transferlab.choices import (FAMILIES, KINDS, LOGGERS, LOSS_WEIGHTING, OPTIMIZERS, SCHEDULERS, STRATEGIES,
                                     strategy_settings)

    FAMILIES.check(cfg.model.family)
    KINDS.check(cfg.data.kind)
    for name, data in (cfg.get("eval_sets") or {}).items():
        KINDS.check(data.kind, key=f"eval_sets.{name}.kind")
    STRATEGIES.check_settings(cfg.strategy.kind, strategy_settings(cfg.strategy))
    OPTIMIZERS.check(cfg.optimizer.name)
    SCHEDULERS.check(cfg.scheduler.name)
    LOSS_WEIGHTING.check(cfg.multitask.loss_weighting)
    for name, spec in (cfg.get("logger") or {}).items():
        if spec is not None:
            LOGGERS.check(spec.kind, key=f"logger.{name}.kind")


def _complete_eval_sets(cfg: DictConfig) -> None:
    """``eval_sets``: name -> overrides of the run's data (a mapping, e.g. ``{corruption: {name: blur}}``)
    or the name of a ``conf/data`` file; the plan keeps each as the complete data config it tests on."""
    from transferlab import CONF_DIR

    for name, spec in list((cfg.get("eval_sets") or {}).items()):
        if not re.fullmatch(r"[A-Za-z0-9_-]+", str(name)):
            raise ConfigError(f"eval_sets.{name}: an evaluation set's name becomes part of metric names "
                              f"(eval/<name>/acc); use letters, digits, '_' and '-' only")
        if isinstance(spec, str):
            known = sorted(p.stem for p in (CONF_DIR / "data").glob("*.yaml") if not p.stem.startswith("_"))
            if spec not in known:
                raise ConfigError(f"eval_sets.{name}={spec!r} is not a dataset config; valid: {', '.join(known)} "
                                  f"(or a mapping of overrides of the run's data)")
            data = compose_config([f"data={spec}"]).data
        elif isinstance(spec, DictConfig):
            data = OmegaConf.merge(cfg.data, spec)
        else:
            raise ConfigError(f"eval_sets.{name}={spec!r} is neither a dataset config name nor a mapping of data "
                              f"overrides (e.g. +eval_sets.{name}.corruption.name=gaussian_noise)")
        set_value(cfg, f"eval_sets.{name}", to_plain(data))


def _resumed(run_dir) -> DictConfig:
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
    set_value(cfg, "resume", str(Path(run_dir).resolve()))  # config.yaml then says the run was resumed
    set_value(cfg, "optuna_trial", None)  # its sweep closed the trial it was; it no longer reports there
    return cfg


def _add_source_task(cfg: DictConfig) -> None:
    """Multi-task transfer: the source task (``source.overrides``) trains jointly, as a task named
    ``source``, instead of first; the plan (and so config.yaml) records it as an ordinary task."""
    if not cfg.multitask.get("source_task"):
        return
    if not cfg.get("source") or not cfg.source.get("overrides"):
        raise ConfigError("multitask.source_task=true needs a source task (source=digits or source.overrides=[...])")
    if cfg.tasks.get("source") is not None:
        raise ConfigError("task 'source' is declared, but multitask.source_task=true adds the source task under that "
                          "name; rename your task or set multitask.source_task=false")
    source = compose_config(list(cfg.source.overrides))
    set_value(source, "model", cfg.model)  # its data may read the model (task=mlm: the vocabulary size)
    source_data = to_plain(source.data)
    label = OmegaConf.select(source, "tasks.main.label", default="label")  # e.g. token for an MLM source
    set_value(cfg, "tasks.source", {"label": label, "num_classes": None, "data": source_data,
                                    "weight": cfg.multitask.source_weight})
    set_value(cfg, "multitask.source_task", False)
    set_value(cfg, "source.overrides", [])
