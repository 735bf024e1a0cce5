"""What a person sees: the console shows what matters, ``<run_dir>/train.log`` keeps everything.

Hydra's job logging (``conf/hydra/job_logging/transferlab.yaml``) writes every record to train.log
and sends to the console, through ``ConsoleHandler``, only the lines meant for a person (this
module's logger, ``show``) and other loggers' warnings and errors, minus the known harmless ones.
Lightning's banners ("GPU available", "TPU available", tips, "Seed set to", "LOCAL_RANK") are INFO
records of its loggers, so they stay in the file. ``verbose=true`` or ``hydra.verbose`` lets
everything through. Errors are not log records: ``cli.user_errors`` prints them, tracebacks stay.
"""
from __future__ import annotations

import logging
import os
import sys
import warnings

from omegaconf import DictConfig

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
    if "RANK" not in os.environ and os.environ.get("NODE_RANK", "0") != "0":
        return False  # Lightning's launcher on another node: its local rank 0 is not the run's rank 0
    return next((os.environ[k] for k in variables if k in os.environ), "0") == "0"


def is_verbose(cfg: DictConfig) -> bool:
    from hydra.core.hydra_config import HydraConfig

    return bool(cfg.get("verbose")) or (HydraConfig.initialized() and bool(HydraConfig.get().verbose))


def choices(plan) -> str:
    """The resolved choices of a run (a ``plan.Plan``), in one line."""
    model, opt, trainer = plan.model, plan.optimizer, plan.trainer
    weights = ("source run" if plan.source_run is not None else model.checkpoint or
               ("hub weights" if model.pretrained else "random init"))
    tasks = [t.name for t in plan.tasks]
    parts = {"model": f"{model.name} ({weights})", "data": plan.data.label, "strategy": plan.strategy.label,
             "optimizer": f"{opt.kind} lr={opt.lr:g} wd={opt.weight_decay:g}",
             "scheduler": plan.scheduler.kind, "epochs": trainer["max_epochs"], "seed": plan.seed,
             "tasks": ",".join(tasks) if tasks != ["main"] else None,
             "eval_sets": ",".join(plan.eval_sets) or None,
             "devices": f"{trainer.get('devices')} ({trainer.get('accelerator')})", "nodes": trainer.get("num_nodes", 1),
             "precision": trainer.get("precision") if str(trainer.get("precision")) != "32-true" else None,
             "logger": ",".join(plan.loggers) or "none"}
    return "  ".join(f"{k}={v}" for k, v in parts.items() if v is not None and (k, v) != ("nodes", 1))


def headline(metrics: dict) -> str:
    return "  ".join(f"{k}={metrics[k]:.4f}" for k in names.HEADLINE if isinstance(metrics.get(k), float))


def duration(seconds: float) -> str:
    return f"{seconds:.1f} s" if seconds < 90 else f"{seconds / 60:.1f} min"
