"""LP-FT (Kumar et al., 2022): linear-probe for ``lp_epochs``, then fine-tune everything with the
backbone at ``backbone_lr_mult`` of the head's learning rate, so the probed head steers the
features instead of distorting them."""
from dataclasses import dataclass

from transferlab.errors import ConfigError
from transferlab.settings import NON_NEGATIVE_INT, POSITIVE, setting
from transferlab.strategies import STRATEGIES
from transferlab.strategies.base import Strategy


@STRATEGIES.register("lp_ft")
@dataclass(kw_only=True)
class LPFT(Strategy):
    kind: str = "lp_ft"
    label: str = "lp_ft"
    lp_epochs: int = setting(2, NON_NEGATIVE_INT, tune=True)
    backbone_lr_mult: float = setting(0.1, POSITIVE, tune=True)

    def fits(self, num_stages, max_epochs):
        if not 0 <= self.lp_epochs <= max_epochs:
            raise ConfigError(f"strategy.lp_epochs={self.lp_epochs} must be within 0..trainer.max_epochs={max_epochs}")

    def frozen_stages(self, epoch, num_stages):
        return set(range(num_stages)) if epoch < self.lp_epochs else set()

    def lr_scale(self, stage, num_stages):
        return self.backbone_lr_mult
