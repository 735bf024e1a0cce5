"""Find run directories and read what they left behind; a report never trusts a run it cannot prove finished.

``metrics.json`` is written last by ``run.train``, so it alone marks a finished run; ``failed.json``
marks a sweep job that raised; ``pruned.json`` an Optuna trial its pruner stopped; a ``config.yaml`` with neither is a run that was killed or is still going.
"""
from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from transferlab import metrics as names

# Folders inside a run that hold files with run-like names (W&B's files/config.yaml, Hydra's own copy).
NOT_RUNS = {"wandb", ".hydra", "csv", "checkpoints", "tensorboard"}


def setting(config: dict, key: str, default=None):
    """A value of a saved (plain) config by dotted key."""
    node = config
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node


@dataclass
class Run:
    dir: Path
    status: str  # finished | pruned | failed | incomplete
    config: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)  # metrics.json; for a failed run, failed.json less the error
    error: str | None = None

    def setting(self, key: str, default=None):
        return setting(self.config, key, default)

    def describe(self, key: str):
        """strategy / model / data / seed, from metrics.json or failed.json, else from the config."""
        value = self.metrics.get(key)
        if value is None and key == "strategy" and "fusion" in self.config:
            return self.setting("fusion.name")  # a fused model: how it was made
        return value if value is not None else self.setting(key if key == "seed" else f"{key}.name")


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _read_yaml(path: Path) -> dict:
    try:
        return yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError):
        return {}


def read_run(run_dir: Path) -> Run:
    config = _read_yaml(run_dir / "config.yaml") if (run_dir / "config.yaml").is_file() else {}
    metrics = _read_json(run_dir / "metrics.json") if (run_dir / "metrics.json").is_file() else None
    if metrics is not None:
        return Run(run_dir, "finished", config, metrics)
    pruned = _read_json(run_dir / "pruned.json") if (run_dir / "pruned.json").is_file() else None
    if pruned is not None:
        return Run(run_dir, "pruned", config, {k: v for k, v in pruned.items() if k != "reason"},
                   error=str(pruned.get("reason")))
    failed = _read_json(run_dir / "failed.json") if (run_dir / "failed.json").is_file() else None
    if failed is not None:
        # failed.json names strategy/model/data/seed for jobs that died before config.yaml was written
        info = {k: v for k, v in failed.items() if k != "error"}
        return Run(run_dir, "failed", config, info, error=str(failed.get("error", "unknown error")))
    return Run(run_dir, "incomplete", config, error="no metrics.json: killed or still running")


def find_runs(dirs) -> list[Run]:
    """Every run directory under ``dirs`` (a directory may itself be a run)."""
    found = set()
    for root in map(Path, dirs):
        for marker in ("config.yaml", "metrics.json", "failed.json"):
            for path in root.rglob(marker):
                rel = path.parent.relative_to(root).parts
                if NOT_RUNS.isdisjoint(rel) and (marker != "metrics.json" or (path.parent / "config.yaml").is_file()):
                    found.add(path.parent.resolve())  # a bare metrics.json is a tl-eval output, not a run
    return [read_run(d) for d in sorted(found)]


def read_history(run_dir: Path, metric: str = names.MONITOR) -> dict[int, float]:
    """``metric`` per epoch from the CSV logger; Lightning leaves the cells of other rows empty."""
    path = Path(run_dir) / "csv" / "metrics.csv"
    if not path.is_file():
        return {}
    history = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            try:
                value, epoch = float(row.get(metric) or "nan"), int(float(row["epoch"]))
            except (KeyError, ValueError):
                continue
            if not math.isnan(value):
                history[epoch] = value  # a resumed run logs an epoch twice: the last one counts
    return history
