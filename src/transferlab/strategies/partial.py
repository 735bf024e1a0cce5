"""Partial freezing: the first ``freeze_stages`` stages (input side) stay frozen, the rest train."""
from dataclasses import dataclass

from transferlab.errors import ConfigError
from transferlab.strategies import STRATEGIES
from transferlab.strategies.base import Strategy


@STRATEGIES.register("partial")
@dataclass(kw_only=True)
class Partial(Strategy):
    kind: str = "partial"
    label: str = "partial"
    freeze_stages: int = 2  # stages frozen, 0..number of stages
    needs_stages = True

    def fits(self, num_stages, max_epochs):
        if not 0 <= self.freeze_stages <= num_stages:
            raise ConfigError(f"strategy.freeze_stages={self.freeze_stages} but the model has {num_stages} stages; "
                              f"valid: 0..{num_stages} ({num_stages} freezes the whole backbone)")

    def frozen_stages(self, epoch, num_stages):
        return set(range(self.freeze_stages))
