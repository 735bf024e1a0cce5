"""Gradual unfreezing (ULMFiT): the head trains alone, then one more stage from the top joins it at
each milestone epoch (``stages_per_milestone`` at a time) until the whole backbone trains."""
from dataclasses import dataclass

from transferlab.errors import ConfigError
from transferlab.strategies import STRATEGIES
from transferlab.strategies.base import Strategy


@STRATEGIES.register("gradual")
@dataclass(kw_only=True)
class Gradual(Strategy):
    kind: str = "gradual"
    label: str = "gradual"
    milestones: list[int] = (1, 2, 3, 4)  # epochs at which the next stage(s) from the top unfreeze
    stages_per_milestone: int = 1
    needs_stages = True

    def check(self, where):
        if any(m < 0 for m in self.milestones) or self.stages_per_milestone < 1:
            raise ConfigError(f"{where}.milestones={list(self.milestones)} must be epochs >= 0 and "
                              f"stages_per_milestone={self.stages_per_milestone} >= 1")

    def frozen_stages(self, epoch, num_stages):
        unfrozen = self.stages_per_milestone * sum(m <= epoch for m in sorted(self.milestones))
        return set(range(max(num_stages - unfrozen, 0)))
