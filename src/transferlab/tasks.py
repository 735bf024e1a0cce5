"""Tasks and loss weighting. A single-task run is the one-task case of the same code.

A task names a label column of a dataset and a head. Tasks that read the run's own ``data`` share
one data stream (several label columns of the same images); a task with ``data`` overrides gets a
stream of its own (e.g. digits 0-4 as an auxiliary task next to few-shot digits 5-9).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from transferlab.errors import ConfigError, DataError
from transferlab.registry import Registry

LOSS_WEIGHTING = Registry("loss weighting", "multitask.loss_weighting")
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


@LOSS_WEIGHTING.register("fixed")
class FixedWeights(nn.Module):
    """Total loss = sum of w_i * L_i with the configured weights.

    ``active`` lists the tasks with a non-zero weight: the module computes no training loss for the
    others, so their heads get no gradient and the optimizer (weight decay included) leaves them be.
    """

    def __init__(self, tasks: list[Task]):
        super().__init__()
        self.weights = {t.name: t.weight for t in tasks}
        self.active = [t.name for t in tasks if t.weight > 0]

    def forward(self, losses: dict[str, torch.Tensor]) -> torch.Tensor:
        return sum(self.weights[name] * loss for name, loss in losses.items() if name in self.active)

    def effective_weights(self) -> dict[str, float]:
        return dict(self.weights)


@LOSS_WEIGHTING.register("uncertainty")
class UncertaintyWeights(nn.Module):
    """Kendall et al. (2018): sum of L_i / (2 exp(s_i)) + s_i / 2, with s_i = log sigma_i^2 learned.

    Tasks configured with weight 0 stay out of the sum, so a switched-off task stays off.
    """

    def __init__(self, tasks: list[Task]):
        super().__init__()
        self.active = [t.name for t in tasks if t.weight > 0]
        self.log_vars = nn.ParameterDict({name: nn.Parameter(torch.zeros(())) for name in self.active})

    def forward(self, losses: dict[str, torch.Tensor]) -> torch.Tensor:
        return sum(loss / (2 * self.log_vars[name].exp()) + self.log_vars[name] / 2
                   for name, loss in losses.items() if name in self.log_vars)

    def effective_weights(self) -> dict[str, float]:
        return {name: float(0.5 * torch.exp(-s.detach())) for name, s in self.log_vars.items()}


def create_loss_weighting(name: str, tasks: list[Task]) -> nn.Module:
    return LOSS_WEIGHTING.create(name, tasks)
