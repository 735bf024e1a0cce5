"""Gradual unfreezing (ULMFiT): the head trains alone, then one more stage from the top joins it at
each milestone epoch (``stages_per_milestone`` at a time) until the whole backbone trains."""
from transferlab.errors import ConfigError
from transferlab.strategies.base import Strategy


class Gradual(Strategy):
    name = "gradual"
    needs_stages = True

    def __init__(self, milestones=(1, 2, 3, 4), stages_per_milestone: int = 1, bn: str = "train", **kwargs):
        super().__init__(bn=bn, **kwargs)
        self.milestones = sorted(int(m) for m in milestones)
        self.stages_per_milestone = stages_per_milestone

    def check(self, num_stages, max_epochs):
        if any(m < 0 for m in self.milestones) or self.stages_per_milestone < 1:
            raise ConfigError(f"strategy.milestones={self.milestones} must be epochs >= 0 and "
                              f"stages_per_milestone={self.stages_per_milestone} >= 1")

    def frozen_stages(self, epoch, num_stages):
        unfrozen = self.stages_per_milestone * sum(m <= epoch for m in self.milestones)
        return set(range(max(num_stages - unfrozen, 0)))
