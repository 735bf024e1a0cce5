"""The shared interface of transfer strategies: which backbone stages are frozen at each epoch, at
what learning-rate scale each stage trains, and the BatchNorm policy.

A strategy is settings and a schedule, nothing else: it knows the model's stages (the family's
grouping) and nothing of datasets, loggers or Lightning; ``callbacks.ApplyStrategy`` applies it at
every epoch, and the module never knows which strategy runs. Every parameter is in the optimizer
from the start (``optim.create_optimizer`` builds one group per stage); freezing toggles
``requires_grad`` and BatchNorm modes, so the optimizer, scheduler, checkpoint and DDP see one fixed
set of groups however often the strategy changes its mind. Its state is a function of the epoch, so
a resumed run re-derives it.

BatchNorm: a frozen stage is frozen whole (weights and running statistics). ``bn: frozen`` also
freezes every BatchNorm layer of the trainable stages (eval mode, affine weights fixed), the usual
choice for small batches; ``bn: train`` lets trainable stages update their statistics.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Literal

from transferlab.errors import ConfigError
from transferlab.settings import Settings, setting

log = logging.getLogger(__name__)


@dataclass(kw_only=True)
class Strategy(Settings):
    kind: str
    label: str  # names the strategy in metrics, run names and reports (finetune from random init = 'scratch')
    bn: Literal["train", "frozen"] = setting("train", (lambda v: v in ("train", "frozen"),
                                                       "a BatchNorm policy: one of train, frozen"))
    cache_features: bool | None = None  # null = cache when the backbone never trains and augmentation is off
    needs_stages = False  # True when the strategy freezes some stages and not others
    adapts = False  # True when the strategy adds modules to the backbone (``prepare``) that merge away after training
    _frozen_norms: list = field(default_factory=list, init=False, repr=False, compare=False)
    _last_frozen: set | None = field(default=None, init=False, repr=False, compare=False)

    # --- what a strategy decides -------------------------------------------------------------
    def prepare(self, model) -> None:
        """Change the model's structure before the optimizer sees it (adapters); most strategies do not."""

    def is_adapter(self, name: str) -> bool:
        """Whether a backbone parameter is one the strategy trains alone (adapters, BitFit's biases)."""
        return False

    def updates(self, model) -> list:
        """What the strategy's added tensors change in the backbone's weights (adapters); none by default."""
        return []

    def own_group(self):
        """(is_adapter, lr scale, weight decay or None) for ``optim.param_groups``; None: no such tensors."""
        return None

    def frozen_stages(self, epoch: int, num_stages: int) -> set[int]:
        """Backbone stages (0 = input side) whose parameters do not train in this epoch."""
        return set()

    def lr_scale(self, stage: int, num_stages: int) -> float:
        """Fixed learning-rate multiplier of a backbone stage, applied on top of the optimizer's."""
        return 1.0

    def fits(self, num_stages: int, max_epochs: int) -> None:
        """Raise ConfigError before training when the settings do not fit the model."""

    def check_fits(self, model, max_epochs: int) -> None:
        if self.needs_stages and not model.has_stages:
            raise ConfigError(f"strategy '{self.label}' freezes some backbone stages and not others, but model "
                              f"'{model.family.name}' has no stage grouping; use finetune, linear_probe or lp_ft, or "
                              f"a model whose family groups its layers")
        self.fits(model.num_stages, max_epochs)

    def backbone_always_frozen(self, num_stages: int, max_epochs: int) -> bool:
        """True when no backbone parameter or statistic ever changes, so features can be cached."""
        return all(len(self.frozen_stages(e, num_stages)) == num_stages for e in range(max_epochs))

    def trains_norm_statistics(self, model, max_epochs: int) -> bool:
        """Whether some BatchNorm layer runs in training mode: it cannot normalise one sample a batch."""
        return (self.bn != "frozen" and bool(model.norm_modules())
                and not self.backbone_always_frozen(model.num_stages, max_epochs))

    def caches_features(self, num_stages: int, max_epochs: int, augment: bool) -> bool:
        """Cache when nothing in the backbone ever changes and, unless forced, no augmentation runs."""
        if self.cache_features is False or not self.backbone_always_frozen(num_stages, max_epochs):
            return False
        return bool(self.cache_features) or not augment

    # --- applying it (``callbacks.ApplyStrategy``) ------------------------------------------------
    def apply(self, model, epoch: int) -> None:
        frozen = self.frozen_stages(epoch, model.num_stages)
        for name, p in model.backbone.named_parameters():
            p.requires_grad_(model.stage_of.get(name, 0) not in frozen)
        norms = [m for s in sorted(frozen) for m in model.stage_modules(s)]
        if self.bn == "frozen":
            norms = model.norm_modules()
            for m in norms:
                for p in m.parameters(recurse=False):
                    p.requires_grad_(False)
        self._frozen_norms = norms
        self.set_norm_modes()
        if frozen != self._last_frozen:
            log.info("epoch %d: %s freezes stages %s of %d (%d trainable parameters)", epoch, self.label,
                     sorted(frozen) or "none", model.num_stages,
                     sum(p.numel() for p in model.parameters() if p.requires_grad))
            self._last_frozen = frozen

    def set_norm_modes(self) -> None:
        """Lightning may put the whole module back into train mode (e.g. after validation)."""
        for m in self._frozen_norms:
            m.eval()

