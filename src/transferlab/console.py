"""What a person sees: the console shows what matters, ``<run_dir>/train.log`` keeps everything.

Hydra's job logging (``conf/hydra/job_logging/transferlab.yaml``) writes every record to train.log
and sends to the console, through ``ConsoleHandler``, only the lines meant for a person (this
module's logger, ``show``) and other loggers' warnings and errors, minus the known harmless ones.
Lightning's banners ("GPU available", "TPU available", tips, "Seed set to", "LOCAL_RANK") are INFO
records of its loggers, so they stay in the file. ``verbose=true`` or ``hydra.verbose`` lets
everything through. Errors are not log records: ``cli.user_errors`` prints them, tracebacks stay.
"""
from __future__ import annotations

import json
import logging
import os
import sys
import time
import warnings
from pathlib import Path

from hydra.core.utils import JobStatus
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from transferlab import metrics as names

log = logging.getLogger(__name__)

# Warnings that say nothing to act on in a transferlab run; the file keeps them.
HARMLESS = (
    "PossibleUserWarning",                    # Lightning's advice: few DataLoader workers, batches < log interval, ...
    "does not have many workers",             # the same advice where it comes without its category
    "is smaller than the logging interval",   # tiny few-shot epochs
    "multiple `ModelCheckpoint` callbacks",   # test(ckpt_path="best") takes the first one, which is best.ckpt
    "LeafSpec)` is deprecated",               # Lightning's own use of torch's pytree
)
LIGHTNING = ("lightning", "pytorch_lightning", "lightning_fabric")


def show(message: str, *args) -> None:
    """A line for the person at the console (and for train.log)."""
    log.info(message, *args)


class ConsoleHandler(logging.StreamHandler):
    """The console of ``conf/hydra/job_logging/transferlab.yaml``: ``show`` lines as they are, other
    records only from WARNING up and not ``HARMLESS``; everything when ``verbose`` or ``hydra_verbose``."""

    def __init__(self, verbose=False, hydra_verbose=False):
        super().__init__(sys.stdout)
        self.verbose = bool(verbose) or bool(hydra_verbose)
        self.setFormatter(logging.Formatter("[%(name)s][%(levelname)s] - %(message)s"))

    def filter(self, record: logging.LogRecord) -> bool:
        if self.verbose or record.name == log.name:
            return super().filter(record)
        return (record.levelno >= logging.WARNING and not any(h in record.getMessage() for h in HARMLESS)
                and super().filter(record))

    def format(self, record: logging.LogRecord) -> str:
        return record.getMessage() if record.name == log.name else super().format(record)


def _log_warning(message, category, filename, lineno, file=None, line=None) -> None:
    logging.getLogger("py.warnings").warning("%s: %s (%s:%s)", category.__name__, message, filename, lineno)


def setup() -> None:
    """Route Python warnings into logging (with their category, which HARMLESS matches) and Lightning's
    records through the root logger's handlers: Lightning adds a console handler of its own when it is
    imported before logging is configured, which would print its banners past the filter."""
    warnings.showwarning = _log_warning
    for name in LIGHTNING:
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True


def rank_zero() -> bool:
    """Whether this process is rank 0, read as Lightning reads it (the first rank variable set), without
    importing Lightning: DDP and SLURM processes of one run print its lines once."""
    variables = ("RANK", "LOCAL_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK")
    return next((os.environ[k] for k in variables if k in os.environ), "0") == "0"


def is_verbose(cfg: DictConfig) -> bool:
    from hydra.core.hydra_config import HydraConfig

    return bool(cfg.get("verbose")) or (HydraConfig.initialized() and bool(HydraConfig.get().verbose))


def choices(plan: DictConfig) -> str:
    """The resolved choices of a run, in one line."""
    model, opt, trainer = plan.model, plan.optimizer, plan.trainer
    weights = model.get("checkpoint") or ("hub weights" if model.get("pretrained") else "source run"
                                          if plan.get("source") and plan.source.get("overrides") else "random init")
    tasks = [name for name, task in plan.tasks.items() if task is not None]
    parts = {"model": f"{model.name} ({weights})", "data": plan.data.name, "strategy": plan.strategy.name,
             "optimizer": f"{opt.name} lr={opt.lr:g} wd={opt.get('weight_decay', 0):g}",
             "scheduler": plan.scheduler.name, "epochs": trainer.max_epochs, "seed": plan.seed,
             "tasks": ",".join(tasks) if tasks != ["main"] else None,
             "eval_sets": ",".join(plan.get("eval_sets") or {}) or None,
             "devices": f"{trainer.devices} ({trainer.accelerator})", "nodes": trainer.get("num_nodes", 1),
             "precision": trainer.get("precision") if str(trainer.get("precision")) != "32-true" else None,
             "logger": ",".join(k for k, v in (plan.get("logger") or {}).items() if v is not None) or "none"}
    return "  ".join(f"{k}={v}" for k, v in parts.items() if v is not None and (k, v) != ("nodes", 1))


def headline(metrics: dict) -> str:
    return "  ".join(f"{k}={metrics[k]:.4f}" for k in names.HEADLINE if isinstance(metrics.get(k), float))


def _duration(seconds: float) -> str:
    return f"{seconds:.1f} s" if seconds < 90 else f"{seconds / 60:.1f} min"


class SweepLines(Callback):
    """One line per job of a sweep, ``[4/15] strategy=linear_probe seed=2  test/acc=0.7860 ... (4.5 s,
    about 1.2 min left)``, after a header naming the sweep directory (enabled in conf/hydra/default.yaml)."""

    def __init__(self):
        self.total, self.swept, self.start, self.done, self.job_start = None, None, None, 0, None

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        if not rank_zero():
            return
        self.total, self.swept = _sweep_shape(config)
        self.start = time.perf_counter()
        jobs = f"{self.total} jobs" if self.total else "jobs"
        show("sweep: %s into %s (each job's detail in <job dir>/%s.log)", jobs, config.hydra.sweep.dir,
             config.hydra.job.name)

    def on_job_start(self, config: DictConfig, **kwargs) -> None:
        self.job_start = time.perf_counter()
        self.start = self.start or self.job_start

    def on_job_end(self, config: DictConfig, job_return, **kwargs) -> None:
        if config.hydra.mode != RunMode.MULTIRUN or not rank_zero():
            return
        seconds = time.perf_counter() - (self.job_start or time.perf_counter())
        self.done += 1
        run_dir = Path(str(OmegaConf.select(config, "paths.run_dir", default=config.hydra.runtime.output_dir)))
        overrides = [o for o in config.hydra.overrides.task
                     if self.swept is None or o.split("=", 1)[0].lstrip("+~") in self.swept]
        number = config.hydra.job.num + 1
        left = ""
        if self.total and self.done < self.total:
            per_job = (time.perf_counter() - self.start) / self.done
            left = f", about {_duration(per_job * (self.total - self.done))} left"
        show("[%s] %s  %s  (%s%s)", f"{number}/{self.total}" if self.total else number, " ".join(overrides),
             _outcome(run_dir, job_return), _duration(seconds), left)


def _outcome(run_dir: Path, job_return) -> str:
    """The headline metrics of a finished job, the error of a failed one, where a pruned trial stopped."""
    for name in ("metrics.json", "failed.json", "pruned.json"):
        try:
            content = json.loads((run_dir / name).read_text())
        except (OSError, ValueError):
            continue
        if name == "pruned.json":
            return f"pruned by Optuna after epoch {content.get('epoch')}"
        return headline(content) if name == "metrics.json" else \
            "failed: " + (str(content.get("error")).splitlines() or [""])[0][:160]
    if job_return.status == JobStatus.FAILED:  # raised past tl-train's own handling: its traceback follows
        return f"failed: {job_return._return_value!r}"[:160]
    return "no metrics.json (stopped)"


def _sweep_shape(config: DictConfig) -> tuple[int | None, set[str] | None]:
    """How many jobs the sweep runs (None when its sweeper decides as it goes) and which keys it varies."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    sweeper = config.hydra.sweeper
    params = [f"{k}={v}" for k, v in (sweeper.get("params") or {}).items()]
    try:
        parsed = OverridesParser.create().parse_overrides(params + list(config.hydra.overrides.task))
    except Exception:  # noqa: BLE001 - a sweeper syntax of its own: show every override
        return sweeper.get("n_trials"), None
    last = {o.key_or_group: o for o in parsed}  # a key given again (the command line after params) wins
    swept = {key for key, o in last.items() if o.is_sweep_override()}
    if not str(sweeper.get("_target_", "")).endswith("BasicSweeper"):
        return sweeper.get("n_trials"), swept
    total = 1
    for o in last.values():
        if o.is_discrete_sweep():
            total *= len(list(o.sweep_string_iterator()))
    return total, swept
