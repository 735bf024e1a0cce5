"""LP-FT (Kumar et al., 2022): linear-probe for ``lp_epochs``, then fine-tune everything with the
backbone at ``backbone_lr_mult`` of the head's learning rate, so the probed head steers the
features instead of distorting them."""
from transferlab.errors import ConfigError
from transferlab.strategies.base import Strategy


class LPFT(Strategy):
    name = "lp_ft"

    def __init__(self, lp_epochs: int = 2, backbone_lr_mult: float = 0.1, bn: str = "train", **kwargs):
        super().__init__(bn=bn, **kwargs)
        self.lp_epochs, self.backbone_lr_mult = lp_epochs, backbone_lr_mult

    def check(self, num_stages, max_epochs):
        if not 0 <= self.lp_epochs <= max_epochs:
            raise ConfigError(f"strategy.lp_epochs={self.lp_epochs} must be within 0..trainer.max_epochs={max_epochs}")
        if self.backbone_lr_mult <= 0:
            raise ConfigError(f"strategy.backbone_lr_mult={self.backbone_lr_mult} must be > 0")

    def frozen_stages(self, epoch, num_stages):
        return set(range(num_stages)) if epoch < self.lp_epochs else set()

    def lr_scale(self, stage, num_stages):
        return self.backbone_lr_mult
