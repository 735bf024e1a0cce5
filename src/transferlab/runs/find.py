"""Finding run directories and reading what they left behind; nothing is trusted that cannot be read.

``metrics.json`` is written last, so it alone marks a finished run; ``failed.json`` marks a job that
raised; ``pruned.json`` an Optuna trial its pruner stopped; a ``config.yaml`` with none of them is a
run that was killed or is still going. A run whose files cannot be read is ``damaged``: listed, and
never averaged with anything.
"""
from __future__ import annotations

import csv
import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from transferlab.errors import ConfigError
from transferlab.runs.directory import ADAPTER, CONFIG, FAILED, METRICS, PRUNED, RunDir

# Folders inside a run that hold files with run-like names (W&B's files/config.yaml, Hydra's own copy).
NOT_RUNS = {"wandb", ".hydra", "csv", "checkpoints", "tensorboard", ADAPTER}
STATUSES = ("finished", "pruned", "failed", "incomplete", "damaged")


# What differs between runs of one setting (one row of a report): seed, where they ran and wrote.
RUN_SPECIFIC = ("seed", "paths", "hydra", "logger", "ckpt_path", "model.checkpoint", "experiment_name", "runs", "sweep",
                "config_version", "resume",
                "optuna_trial", "source.cache_dir", "trainer.enable_progress_bar", "trainer.enable_model_summary")


def _flatten(node, prefix="") -> dict:
    if isinstance(node, dict):
        out = {}
        for k, v in node.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: json.dumps(node, sort_keys=True, default=str)}


def under(key: str, prefixes) -> bool:
    """``key`` is one of the dotted ``prefixes`` or inside one."""
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def setting_items(config: dict) -> tuple:
    """A saved config without seed and run-specific values: runs with equal items share a setting."""
    return tuple(sorted((k, v) for k, v in _flatten(config).items() if not under(k, RUN_SPECIFIC)))


def setting_digest(config: dict) -> str:
    """A short name of a run's setting, for what a fused model was made of."""
    return hashlib.sha256(json.dumps(setting_items(config)).encode()).hexdigest()[:12]


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
    status: str  # one of STATUSES
    config: dict = field(default_factory=dict)  # upgraded to this version
    metrics: dict = field(default_factory=dict)  # metrics.json; failed/pruned: their record less the reason
    error: str | None = None

    def setting(self, key: str, default=None):
        return setting(self.config, key, default)

    def describe(self, key: str):
        """strategy / model / data / seed, from metrics.json or failed.json, else from the config."""
        value = self.metrics.get(key)
        if value is None and key == "strategy" and "fusion" in self.config:
            return self.setting("fusion.kind")  # a fused model: how it was made
        if value is not None:
            return value
        return self.setting({"seed": "seed", "model": "model.name"}.get(key, f"{key}.label"))


def read_run(run_dir: Path) -> Run:
    folder = RunDir(run_dir)
    try:
        config = folder.read_config() if folder.has(CONFIG) else {}
    except ConfigError as e:
        return Run(Path(run_dir), "damaged", error=str(e))
    for name, status in ((METRICS, "finished"), (PRUNED, "pruned"), (FAILED, "failed")):
        if not folder.has(name):
            continue
        try:
            record = folder.read_json(name)
        except ConfigError as e:
            return Run(Path(run_dir), "damaged", config, error=str(e))
        if status == "finished":
            return Run(Path(run_dir), status, config, record)
        reason = "reason" if status == "pruned" else "error"
        return Run(Path(run_dir), status, config, {k: v for k, v in record.items() if k != reason},
                   error=str(record.get(reason, "unknown error")))
    return Run(Path(run_dir), "incomplete", config, error=f"no {METRICS}: killed or still running")


def find_runs(dirs) -> list[Run]:
    """Every run directory under ``dirs`` (a directory may itself be a run)."""
    found = set()
    for root in map(Path, dirs):
        for marker in (CONFIG, METRICS, FAILED):
            for path in root.rglob(marker):
                rel = path.parent.relative_to(root).parts
                if NOT_RUNS.isdisjoint(rel) and (marker != METRICS or (path.parent / CONFIG).is_file()):
                    found.add(path.parent.resolve())  # a bare metrics.json is a tl-eval output, not a run
    return [read_run(d) for d in sorted(found)]


def read_history(run_dir: Path, metric: str) -> dict[int, float]:
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


def check_sweep(sweep_dir, belongs=None) -> None:
    """A sweep never writes into a folder holding runs, finished or not; ``belongs(run)`` may accept
    the runs of the search it continues (an Optuna study run again with the same command)."""
    from transferlab.runs.directory import refuse_interpolation

    refuse_interpolation(str(sweep_dir))
    folder = Path(sweep_dir)
    if not folder.is_dir():
        return
    found = [r for r in find_runs([folder]) if belongs is None or not belongs(r)]
    if found:
        shown = ", ".join(str(r.dir.relative_to(folder.resolve())) for r in found[:3])
        raise ConfigError(f"'{folder}' already holds {len(found)} run(s) of another sweep ({shown}"
                          f"{' ...' if len(found) > 3 else ''}); a sweep never writes among them. Choose a new "
                          f"directory (hydra.sweep.dir=..., or leave it out for a fresh timestamped one)")
