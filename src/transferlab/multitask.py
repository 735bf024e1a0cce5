"""Several tasks through one backbone (the ``multitask`` node): how their losses add up, how their
batches are drawn, which one selects checkpoints, and the joint source task.

``multitask.loss_weighting.kind`` picks the weighting (``LOSS_WEIGHTING``); each entry's ``create``
builds the ``nn.Module`` (``loss_weighting.py``) that turns the tasks' losses into one.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from transferlab.registry import Registry
from transferlab.settings import Settings, setting

LOSS_WEIGHTING = Registry("multitask.loss_weighting", "loss weighting", modules=("transferlab.multitask",))


@LOSS_WEIGHTING.register("fixed")
@dataclass(kw_only=True)
class Fixed(Settings):
    """Total loss = sum of w_i * L_i with the tasks' weights."""
    kind: str = "fixed"

    def create(self, tasks):
        from transferlab.loss_weighting import FixedWeights

        return FixedWeights(tasks)


@LOSS_WEIGHTING.register("uncertainty")
@dataclass(kw_only=True)
class Uncertainty(Settings):
    """Kendall et al. (2018): learned task uncertainties weigh the losses."""
    kind: str = "uncertainty"

    def create(self, tasks):
        from transferlab.loss_weighting import UncertaintyWeights

        return UncertaintyWeights(tasks)


@dataclass(kw_only=True)
class Multitask(Settings):
    source_task: bool = False  # true = train the source task jointly as task `source` instead of first
    source_weight: float = 1.0  # loss weight of that source task
    loss_weighting: object = setting(factory=Fixed, choose=LOSS_WEIGHTING)
    monitor: str | None = None  # task whose val/acc selects checkpoints; null = the first task
    sampling: Literal["max_size_cycle", "min_size", "max_size", "sequential"] = setting(
        "max_size_cycle", (lambda v: v in ("max_size_cycle", "min_size", "max_size", "sequential"),
                           "a CombinedLoader mode: one of max_size_cycle, min_size, max_size, sequential"))
