"""Resolve once: a composed config becomes the run's plan, pure and typed.

``resolve(cfg)`` decides everything a run decides from its config, in one pass: overrides of the
caller (tl-eval, tl-reproduce), resume (the interrupted run's own config, upgraded to this version),
evaluation sets, the joint source task, every group's typed settings (each registry entry checks its
own keys and values, so a typo fails in a second, before anything trains), and what must happen
before building: the steps ``run.prepare`` performs (a tokenizer to train, the source run to train,
named by their cache keys). It writes nothing and trains nothing. ``Plan.config`` is config.yaml.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from transferlab.config import compose_config, set_value, to_plain
from transferlab.errors import ConfigError
from transferlab.settings import INTEGER, POSITIVE_INT, Settings, optional, setting


@dataclass(kw_only=True)
class Trainer(Settings):
    """The Lightning Trainer arguments the plan itself reads; the rest go to Lightning as they are."""
    max_epochs: int = setting(30, POSITIVE_INT)
    check_val_every_n_epoch: int | None = setting(1, optional(POSITIVE_INT))

    @classmethod
    def parse(cls, node, where):
        plain = dict(node)
        own = super().parse({k: plain[k] for k in ("max_epochs", "check_val_every_n_epoch") if k in plain}, where)
        every, epochs = own.check_val_every_n_epoch, own.max_epochs
        if isinstance(every, int) and every > epochs:  # checkpoints are chosen on validation
            raise ConfigError(f"trainer.check_val_every_n_epoch={every} is more than trainer.max_epochs={epochs}: the "
                              f"run would never validate, so no checkpoint could be chosen; use a value <= {epochs}")
        return own


@dataclass(frozen=True)
class Plan:
    """One run, decided: the resolved config (read-only) and its typed settings per group."""
    config: DictConfig
    run_dir: Path
    model: object  # models.base.Family
    data: object  # data.base.Data
    eval_sets: dict  # name -> Data
    tasks: list  # tasks.TaskSpec, the joint source task among them
    task_data: dict  # task name -> Data, for tasks with data of their own
    strategy: object  # strategies.base.Strategy
    regularizer: object  # regularizers.Regularizer
    optimizer: object  # optim.Optimizer
    scheduler: object  # optim.Scheduler
    multitask: object  # multitask.Multitask
    loggers: dict  # entry name -> tracking logger settings
    trainer: dict  # Lightning Trainer arguments
    evaluation: object  # evaluation.Evaluation: what testing computes beyond the metrics of every pass
    steps: tuple = field(default=())  # what run.prepare does first: train a tokenizer, the source run

    def __repr__(self) -> str:
        return f"Plan(run_dir={str(self.run_dir)!r}, steps={[str(s) for s in self.steps]})"

    @property
    def resumed(self) -> bool:
        return bool(self.config.get("resume"))

    @property
    def seed(self) -> int:
        return self.config.seed

    @property
    def source_run(self):
        """The source run this run transfers from (a step of ``run.prepare``), or None."""
        from transferlab.source import SourceRun

        return next((s for s in self.steps if isinstance(s, SourceRun)), None)


def resolve(cfg: DictConfig, overrides: dict | None = None) -> Plan:
    """The plan of one run (``cfg`` stays as it was). ``overrides``: config key -> value applied first
    (what tl-eval and tl-reproduce change of a saved config). Settings that name the user's files
    (``runs.saved.path_settings``) are made absolute against the working directory, so config.yaml
    means the same files from any folder (a resumed run keeps its own, located when it was read)."""
    config = OmegaConf.create(OmegaConf.to_container(cfg, resolve=False))
    for key, value in (overrides or {}).items():
        set_value(config, key, value)
    _check_missing(config)
    try:
        config = OmegaConf.create(to_plain(config))  # interpolations resolved once, overrides' included
    except Exception as e:  # noqa: BLE001 - OmegaConf's interpolation errors
        raise ConfigError(f"the config cannot be resolved: {str(e).splitlines()[0]}") from None
    resumed = bool(config.get("resume"))
    if resumed:
        config = _resumed(config)
    _check_groups(config)
    _complete_eval_sets(config)
    _add_source_task(config)
    if not resumed:
        config = _absolute(config)
    return _typed(config)


def _absolute(config: DictConfig) -> DictConfig:
    from transferlab.runs import absolute_paths

    plain = to_plain(config)
    absolute_paths(plain, Path.cwd())
    return OmegaConf.create(plain)


def _check_groups(config: DictConfig) -> None:
    """A config without a group the plan reads (a saved config of an older version, or an edited one)
    is an error naming the key, not an attribute error deep inside."""
    from transferlab.runs.saved import REQUIRED

    missing = [k for k in REQUIRED if config.get(k) is None]
    if missing:
        raise ConfigError(f"the config has no '{missing[0]}' (a config saved by an older transferlab, or edited?); "
                          f"set it, e.g. {missing[0]}=..., or start from today's defaults")


def _typed(config: DictConfig) -> Plan:
    from transferlab import source as sources
    from transferlab.data import KINDS
    from transferlab.evaluation import Evaluation
    from transferlab.models import FAMILIES
    from transferlab.multitask import Multitask
    from transferlab.optim import OPTIMIZERS, SCHEDULERS
    from transferlab.regularizers import REGULARIZERS
    from transferlab.strategies import STRATEGIES
    from transferlab.tasks import task_specs
    from transferlab.tracking import parse_loggers

    seed = config.get("seed")
    if not INTEGER[0](seed):
        raise ConfigError(f"seed={seed!r} is not valid: it must be {INTEGER[1]}")
    model = FAMILIES.parse(_model_node(config), "model")
    data = KINDS.parse(config.data, "data")
    eval_sets = {name: KINDS.parse(node, f"eval_sets.{name}") for name, node in (config.get("eval_sets") or {}).items()}
    multitask = Multitask.parse(config.multitask, "multitask")
    tasks = task_specs(config.tasks, multitask.monitor)
    task_data = {t.name: KINDS.parse(OmegaConf.merge(config.data, t.data), f"tasks.{t.name}.data")
                 for t in tasks if t.data}
    for where, node in [("data", data), *((f"eval_sets.{n}", d) for n, d in eval_sets.items()),
                        *((f"tasks.{n}.data", d) for n, d in task_data.items())]:
        _check_modality(model, node, where)
    steps = list(model.steps())
    if sources.wanted(config):
        src_cfg, folder = sources.source_config(config, model.inputs_key())
        source = sources.SourceRun(_typed_source(src_cfg), tuple(config.source.overrides))
        set_value(config, "model.checkpoint", str(source.checkpoint))
        model = FAMILIES.parse(_model_node(config), "model")
        steps.append(source)
    # a config from before the group existed had no regulariser (runs.saved fills it in the same way)
    regularizer = REGULARIZERS.parse(config.get("regularizer") or {"kind": "none"}, "regularizer")
    plan = Plan(config=config, run_dir=Path(str(config.paths.run_dir)), model=model, data=data, eval_sets=eval_sets,
                tasks=tasks, task_data=task_data, strategy=STRATEGIES.parse(config.strategy, "strategy"),
                regularizer=regularizer,
                optimizer=OPTIMIZERS.parse(config.optimizer, "optimizer"),
                scheduler=SCHEDULERS.parse(config.scheduler, "scheduler"), multitask=multitask,
                loggers=parse_loggers(config.get("logger")), trainer=to_plain(config.trainer),
                evaluation=Evaluation.parse(config.get("eval") or {}, "eval"), steps=tuple(steps))
    Trainer.parse(config.trainer, "trainer")
    OmegaConf.set_readonly(config, True)
    return plan


def _model_node(config: DictConfig):
    """The model settings the run builds from. A resumed run starts from its own last.ckpt (fit restores
    every weight from it), not from the source weights it named when it began: those may be gone or,
    saved relative, name nothing from this folder."""
    if config.get("resume") and config.get("ckpt_path") and config.model.get("checkpoint"):
        return OmegaConf.merge(config.model, {"checkpoint": str(config.ckpt_path)})
    return config.model


def _typed_source(src_cfg: DictConfig) -> Plan:
    """The source run's own plan (resolved like any run; its paths absolute, after its cache key)."""
    config = OmegaConf.create(to_plain(src_cfg))
    _complete_eval_sets(config)
    _add_source_task(config)
    return _typed(_absolute(config))


def _check_missing(config: DictConfig) -> None:
    missing = sorted(k for k in OmegaConf.missing_keys(config) if not k.startswith("hydra"))
    if missing:
        raise ConfigError(f"required value(s) not set: {', '.join(missing)}; pass them as overrides, "
                          f"e.g. {missing[0]}=...")


def _check_modality(model, data, where: str) -> None:
    if model.modality != data.modality:
        from transferlab.data import KINDS

        kinds = [e.name for e in KINDS.entries() if e.cls.modality == model.modality]
        raise ConfigError(f"model '{model.name}' (model.kind={model.kind}) reads {model.modality}, but {where} "
                          f"'{data.label}' ({where}.kind={data.kind}) is not a {model.modality} dataset; valid "
                          f"kinds: {', '.join(kinds)} (a source run of another modality? choose its source= too)")


def _complete_eval_sets(config: DictConfig) -> None:
    """``eval_sets``: name -> overrides of the run's data (a mapping, e.g. ``{corruption: {kind: blur}}``)
    or the name of a ``conf/data`` file; the plan keeps each as the complete data config it tests on."""
    from transferlab import CONF_DIR

    for name, spec in list((config.get("eval_sets") or {}).items()):
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
            data = OmegaConf.merge(config.data, spec)
        else:
            raise ConfigError(f"eval_sets.{name}={spec!r} is neither a dataset config name nor a mapping of data "
                              f"overrides (e.g. +eval_sets.{name}.corruption.kind=gaussian_noise)")
        set_value(config, f"eval_sets.{name}", to_plain(data))


def _resumed(config: DictConfig) -> DictConfig:
    """The interrupted run's own config, continuing from its last checkpoint in its own directory."""
    from transferlab.runs import RunDir

    run = RunDir(config.resume)
    command = f"tl-train resume={run.path}"
    # model.checkpoint is only the start of the first epoch: the weights now come from last.ckpt
    saved = OmegaConf.create(run.located_config(command, optional=("model.checkpoint", "ckpt_path")))
    if not run.last.is_file():
        raise ConfigError(f"cannot resume '{run.path}': it has no checkpoints/last.ckpt (it stopped before "
                          f"the first epoch ended); start it again instead")
    if run.finished():
        raise ConfigError(f"'{run.path}' already finished (metrics.json exists); nothing to resume")
    set_value(saved, "ckpt_path", str(run.last.resolve()))
    set_value(saved, "paths.run_dir", str(run.path.resolve()))
    set_value(saved, "resume", str(run.path.resolve()))  # config.yaml then says the run was resumed
    set_value(saved, "optuna_trial", None)  # its sweep closed the trial it was; it no longer reports there
    for key in ("trainer.enable_progress_bar", "verbose"):  # how the console looks is this command's
        if OmegaConf.select(config, key, default=None) is not None:
            set_value(saved, key, OmegaConf.select(config, key))
    return saved


def _add_source_task(config: DictConfig) -> None:
    """Multi-task transfer: the source task (``source.overrides``) trains jointly, as a task named
    ``source``, instead of first; the plan (and so config.yaml) records it as an ordinary task."""
    if not config.multitask.get("source_task"):
        return
    if not config.get("source") or not config.source.get("overrides"):
        raise ConfigError("multitask.source_task=true needs a source task (source=digits or source.overrides=[...])")
    if config.tasks.get("source") is not None:
        raise ConfigError("task 'source' is declared, but multitask.source_task=true adds the source task under that "
                          "name; rename your task or set multitask.source_task=false")
    source = compose_config(list(config.source.overrides))
    set_value(source, "model", config.model)  # its tasks may read the model (mlm: the vocabulary size)
    tasks = [t for t in to_plain(source.tasks).values() if t is not None]
    task = dict(tasks[0]) if tasks else {"column": "label"}
    task.update(data=to_plain(source.data), weight=config.multitask.source_weight)
    set_value(config, "tasks.source", task)
    set_value(config, "multitask.source_task", False)
    set_value(config, "source.overrides", [])
