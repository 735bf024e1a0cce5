"""The Python API: the same path the command-line tools take, for notebooks and scripts.

    import transferlab
    result = transferlab.train("strategy=linear_probe", "optimizer.lr=1e-2")
    result.metrics["test/acc"], result.run_dir, result.checkpoint

Overrides are written as on the command line. Each call composes its config, resolves one plan, and
acts through ``run`` exactly as ``tl-train`` / ``tl-eval`` / ``tl-fuse`` do, then returns a small
``Result`` instead of making the caller read files. A call leaves no global state behind: Hydra's
config search path, logging handlers, the W&B run, torch's thread count and the caller's random
generators are as they were before it.
"""
from __future__ import annotations

import logging
import os
import random
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from transferlab import runs

__all__ = ["train", "evaluate", "fuse", "rank", "predict", "export", "report", "Result"]  # transferlab.<name> (transferlab/__init__.py)


@dataclass
class Result:
    """What a call left behind: its run directory and metrics.json's content."""
    run_dir: Path
    metrics: dict = field(default_factory=dict)

    @property
    def checkpoint(self) -> Path | None:
        """The checkpoint the run tested (fusions: the fused one), in its own directory."""
        recorded = self.metrics.get("best_checkpoint") or self.metrics.get("fused_checkpoint")
        return runs.RunDir(self.run_dir).checkpoints / Path(recorded).name if recorded else None

    def __getitem__(self, key: str):
        return self.metrics[key]


def _flat(overrides) -> list[str]:
    out = []
    for o in overrides:
        out += [o] if isinstance(o, (str, os.PathLike)) else list(o)
    return out


@contextmanager
def _isolated(run_dir: Path | None, log_name: str):
    """The caller's random state and logging as they were; the run's log records in ``<run_dir>/<name>.log``."""
    import numpy as np
    import torch

    states = random.getstate(), np.random.get_state(), torch.get_rng_state(), torch.get_num_threads()
    handler = None
    root = logging.getLogger()
    level = root.level
    if run_dir is not None:
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(runs.RunDir(run_dir).log(log_name))
        handler.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))
        root.addHandler(handler)
        root.setLevel(min(level, logging.INFO) if level else logging.INFO)
    try:
        yield
    finally:
        if handler is not None:
            root.removeHandler(handler)
            handler.close()
            root.setLevel(level)
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.set_rng_state(states[2])
        torch.set_num_threads(states[3])


def _run_dir(cfg, run_dir) -> str:
    """The folder a new run claims: ``run_dir`` when given, else the timestamped one tl-train would use."""
    from omegaconf import OmegaConf

    runs.forget_claims()
    if run_dir is not None:
        return runs.claim(str(run_dir))
    resume = OmegaConf.select(cfg, "resume", default=None)
    if resume:
        return str(resume)
    return runs.claim(str(OmegaConf.select(cfg, "hydra.run.dir")))


def _composed(overrides: list[str], config_name: str):
    """The task config (Hydra's node removed) and Hydra's own, as ``tl-<command>`` would compose them."""
    from omegaconf import OmegaConf, open_dict

    from transferlab import redact
    from transferlab.config import compose_config

    redact.remember(overrides)
    full = compose_config(overrides, config_name, hydra=True)
    task = OmegaConf.create(OmegaConf.to_container(full, resolve=False))
    with open_dict(task):
        del task["hydra"]
    return task, full


def train(*overrides, run_dir=None, callbacks=()) -> Result:
    """``tl-train overrides...`` in this process: one run (prepare, fit, test the best checkpoint)."""
    task, hydra = _composed(_flat(overrides), "train")
    folder = _run_dir(hydra, run_dir)
    with _isolated(folder, "train"):  # imports inside: a library drawing from `random` on import counts too
        from transferlab import run
        from transferlab.plan import resolve

        plan = resolve(task, {"paths.run_dir": folder})
        metrics = run.train(plan, tuple(callbacks))
    return Result(Path(plan.run_dir), metrics)


def evaluation_plan(cfg, loaded):
    """The plan a checkpoint was trained with, on this command's data, evaluation sets and loggers."""
    from omegaconf import OmegaConf

    from transferlab.fusion.act import FIXED
    from transferlab.plan import resolve

    overrides = {**FIXED, "paths.run_dir": cfg.paths.run_dir,
                 "logger": OmegaConf.to_container(cfg.logger, resolve=False) if cfg.get("logger") else None}
    if cfg.get("logger") and "wandb" in cfg.logger:
        overrides["logger.wandb.job_type"] = "eval"  # tell evaluations apart from training runs
    for key in ("data", "eval_sets"):
        if cfg.get(key) is not None:
            overrides[key] = OmegaConf.to_container(cfg[key], resolve=False)
    return resolve(OmegaConf.create(loaded.config), overrides)


def evaluate(ckpt_path, *overrides, run_dir=None) -> Result:
    """``tl-eval ckpt_path=... overrides...``: test a checkpoint (every task of it) on its data or another."""
    from transferlab.config import set_value

    task, hydra = _composed([f"ckpt_path={ckpt_path}", *_flat(overrides)], "eval")
    folder = _run_dir(hydra, run_dir)
    set_value(task, "paths.run_dir", folder)
    with _isolated(folder, "eval"):
        from transferlab import run
        from transferlab.models import from_checkpoint

        loaded = from_checkpoint(ckpt_path)
        metrics = run.evaluate(evaluation_plan(task, loaded), loaded)
    return Result(Path(folder), metrics)


def _act(given, config_name, run_dir, target: str) -> Result:
    """Compose, fix the run folder and call ``module:function`` on the config, isolated: the shape of every
    command that trains nothing of its own (the import is inside, like train's)."""
    import importlib

    from transferlab.config import set_value

    task, hydra = _composed(given, config_name)
    folder = _run_dir(hydra, run_dir)
    set_value(task, "paths.run_dir", folder)
    with _isolated(folder, config_name):
        module, name = target.split(":")
        return Result(Path(folder), getattr(importlib.import_module(module), name)(task))


def fuse(*overrides, run_dir=None) -> Result:
    """``tl-fuse method=... runs=[...]``: fuse finished runs into one model, no training."""
    from transferlab.config import renamed

    return _act(renamed(_flat(overrides), "method", "fusion"), "fuse", run_dir, "transferlab.fusion.act:fuse")


def rank(*overrides, run_dir=None) -> Result:
    """``tl-rank candidates=[...] ...``: score candidate sources by transferability (and fine-tune them when
    asked); ``Result.metrics`` is the summary (per score the candidates in order, τ when validated)."""
    from transferlab.config import renamed

    return _act(renamed(_flat(overrides), "experiment", "ranking"), "rank", run_dir,
                "transferlab.transferability.rank:rank")


def predict(*overrides, run_dir=None) -> Result:
    """``tl-predict ckpt_path=... inputs=...``: predictions.csv and summary.json; ``Result.metrics`` is the
    summary (counts, and the metrics when the inputs carry labels)."""
    from transferlab.config import renamed

    given = renamed(renamed(_flat(overrides), "inputs", "inputs.path"), "fusion", "fusion_dir")
    return _act(given, "predict", run_dir, "transferlab.deploy.predict:predict")


def export(*overrides, run_dir=None) -> Result:
    """``tl-export ckpt_path=... format=...``: a new folder another tool opens, checked by loading it back;
    ``Result.metrics`` is its record (the check's figures among it)."""
    from transferlab.config import renamed

    given = renamed(renamed(_flat(overrides), "fusion", "fusion_dir"), "task", "task_name")
    return _act(given, "export", run_dir, "transferlab.deploy.export:export")


def report(*dirs, out=None, select_by: str | None = None):
    """``tl-report DIR...``: aggregate every run under the directories into report.md/.csv/.png."""
    from transferlab.reports import write_report

    return write_report([Path(d) for d in _flat(dirs)], out, select_by=select_by)
