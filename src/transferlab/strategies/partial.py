"""Partial freezing: the first ``freeze_stages`` stages (input side) stay frozen, the rest train."""
from transferlab.errors import ConfigError
from transferlab.strategies.base import Strategy


class Partial(Strategy):
    name = "partial"
    needs_stages = True

    def __init__(self, freeze_stages: int = 2, bn: str = "train", **kwargs):
        super().__init__(bn=bn, **kwargs)
        self.freeze_stages = freeze_stages

    def check(self, num_stages, max_epochs):
        if not isinstance(self.freeze_stages, int) or not 0 <= self.freeze_stages <= num_stages:
            raise ConfigError(f"strategy.freeze_stages={self.freeze_stages} but the model has {num_stages} stages; "
                              f"valid: 0..{num_stages} ({num_stages} freezes the whole backbone)")

    def frozen_stages(self, epoch, num_stages):
        return set(range(self.freeze_stages))
