"""Tasks. A single-task run is the one-task case of the same code (their losses add up in loss_weighting.py).

A task names a label column of a dataset and a head. Tasks that read the run's own ``data`` share
one data stream (several label columns of the same images); a task with ``data`` overrides gets a
stream of its own (e.g. digits 0-4 as an auxiliary task next to few-shot digits 5-9).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from omegaconf import DictConfig, OmegaConf

from transferlab.errors import ConfigError, DataError

TASK_KEYS = ("label", "num_classes", "weight", "data")


@dataclass(frozen=True)
class Task:
    name: str
    num_classes: int
    class_names: list[str] = field(default_factory=list)
    label: str = "label"          # label column of the task's dataset
    weight: float = 1.0
    data: dict = field(default_factory=dict)  # overrides of the run's data config; {} = the run's data

    @property
    def stream(self) -> str:
        """Tasks with identical data overrides read the same batches."""
        return stream_of(self.data, self.name)


def stream_of(data: dict, task_name: str) -> str:
    return "data" if not data else f"data:{task_name}"


def task_specs(tasks_cfg: DictConfig | dict, monitor: str | None = None) -> dict[str, dict]:
    """The ``tasks`` mapping (name -> spec) checked before any data is read; ``null`` entries dropped."""
    spec = OmegaConf.to_container(tasks_cfg, resolve=True) if isinstance(tasks_cfg, DictConfig) else dict(tasks_cfg)
    specs = {}
    for name, t in spec.items():
        if t is None:  # `tasks.main=null` removes an inherited task
            continue
        t = dict(t)
        unknown = set(t) - set(TASK_KEYS)
        if unknown:
            raise ConfigError(f"task '{name}' has unknown keys {sorted(unknown)}; valid: {', '.join(TASK_KEYS)}")
        weight = t.get("weight", 1.0)
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) or weight < 0:
            raise ConfigError(f"task '{name}' has weight {weight!r}; loss weights must be finite numbers >= 0")
        specs[str(name)] = {"label": t.get("label", "label"), "num_classes": t.get("num_classes"),
                            "weight": float(weight), "data": t.get("data") or {}}
    if not specs:
        raise ConfigError("no tasks declared: `tasks` needs at least one entry, e.g. tasks.main.label=label")
    if all(t["weight"] == 0 for t in specs.values()):
        raise ConfigError(f"all task weights are zero ({', '.join(specs)}): nothing would train")
    if monitor is not None and monitor not in specs:
        raise ConfigError(f"multitask.monitor='{monitor}' is not a declared task; declared: {', '.join(specs)}")
    return specs


def create_tasks(specs: dict[str, dict], class_names: dict[str, list[str]]) -> list[Task]:
    """Complete tasks: ``class_names[task]`` are the classes its data has in its label column."""
    tasks = []
    for name, spec in specs.items():
        names = list(class_names[name])
        if spec["num_classes"] is not None and spec["num_classes"] != len(names):
            raise DataError(f"task '{name}' declares num_classes={spec['num_classes']} but its data has "
                            f"{len(names)} classes in column '{spec['label']}' ({', '.join(names[:10])}); "
                            f"drop num_classes or fix it")
        tasks.append(Task(name=name, num_classes=len(names), class_names=names, label=spec["label"],
                          weight=spec["weight"], data=spec["data"]))
    return tasks
