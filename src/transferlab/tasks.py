"""Tasks and loss weighting. A single-task run is the one-task case of the same code.

A task names a label column of a dataset and a head. Tasks that read the run's own ``data`` share
one data source (several label columns of the same images); a task with ``data`` overrides gets a
data source of its own (e.g. digits 0-4 as an auxiliary task next to few-shot digits 5-9).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from transferlab.errors import ConfigError


@dataclass
class Task:
    name: str
    label: str = "label"          # label column of the source dataset
    num_classes: int | None = None  # None until read from the data
    weight: float = 1.0
    data: dict = field(default_factory=dict)  # overrides of the run's data config; {} = the run's data
    class_names: list[str] = field(default_factory=list)

    @property
    def source(self) -> str:
        """Tasks with identical data overrides read the same batches."""
        return "data" if not self.data else f"data:{self.name}"


def create_tasks(tasks_cfg: DictConfig | dict, monitor: str | None = None) -> list[Task]:
    """Tasks from the ``tasks`` mapping (name -> spec), checked before any data is read."""
    spec = OmegaConf.to_container(tasks_cfg, resolve=True) if isinstance(tasks_cfg, DictConfig) else dict(tasks_cfg)
    if not any(spec.values()):
        raise ConfigError("no tasks declared: `tasks` needs at least one entry, e.g. tasks.main.label=label")
    tasks = []
    for name, t in spec.items():
        if t is None:  # `tasks.main=null` removes an inherited task
            continue
        t = dict(t)
        unknown = set(t) - {"label", "num_classes", "weight", "data"}
        if unknown:
            raise ConfigError(f"task '{name}' has unknown keys {sorted(unknown)}; valid: label, num_classes, weight, data")
        weight = t.get("weight", 1.0)
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) or weight < 0:
            raise ConfigError(f"task '{name}' has weight {weight!r}; loss weights must be finite numbers >= 0")
        tasks.append(Task(name=str(name), label=t.get("label", "label"), num_classes=t.get("num_classes"),
                          weight=float(weight), data=t.get("data") or {}))
    if all(t.weight == 0 for t in tasks):
        raise ConfigError(f"all task weights are zero ({', '.join(t.name for t in tasks)}): nothing would train")
    if monitor is not None and monitor not in {t.name for t in tasks}:
        raise ConfigError(f"multitask.monitor='{monitor}' is not a declared task; declared: {', '.join(t.name for t in tasks)}")
    return tasks


def add_source_task(cfg) -> None:
    """Multi-task transfer: the source task (``source.overrides``) trains jointly, as a task named
    ``source``, instead of first. Written into ``cfg.tasks`` so config.yaml records what ran."""
    from transferlab.config import compose_config, set_value

    if not cfg.multitask.get("source_task"):
        return
    if not cfg.get("source") or not cfg.source.get("overrides"):
        raise ConfigError("multitask.source_task=true needs a source task (source=digits or source.overrides=[...])")
    if cfg.tasks.get("source") is not None:
        raise ConfigError("task 'source' is declared, but multitask.source_task=true adds the source task under that "
                          "name; rename your task or set multitask.source_task=false")
    source_data = compose_config(list(cfg.source.overrides)).data
    set_value(cfg, "tasks.source", {"label": "label", "num_classes": None, "data": source_data,
                                    "weight": cfg.multitask.source_weight})
    set_value(cfg, "multitask.source_task", False)
    set_value(cfg, "source.overrides", [])


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


LOSS_WEIGHTING = {"fixed": FixedWeights, "uncertainty": UncertaintyWeights}


def create_loss_weighting(name: str, tasks: list[Task]) -> nn.Module:
    if name not in LOSS_WEIGHTING:
        raise ConfigError(f"unknown loss_weighting '{name}'; valid: {', '.join(LOSS_WEIGHTING)}")
    return LOSS_WEIGHTING[name](tasks)
