"""The shared interface of transfer strategies: which backbone stages are frozen at each epoch, at
what learning-rate scale each stage trains, and the BatchNorm policy.

A strategy is a Lightning callback: it knows the model's stages (timm's grouping) and nothing of
datasets or loggers, and the module never knows which strategy runs. Every parameter is in the
optimizer from the start (``optim.create_optimizer`` builds one group per stage); freezing toggles
``requires_grad`` and BatchNorm modes, so the optimizer, scheduler, checkpoint and DDP see one fixed
set of groups however often the strategy changes its mind. Its state is a function of the epoch,
so a resumed run re-derives it.

BatchNorm: a frozen stage is frozen whole (weights and running statistics). ``bn: frozen`` also
freezes every BatchNorm layer of the trainable stages (eval mode, affine weights fixed), the usual
choice for small batches; ``bn: train`` lets trainable stages update their statistics.
"""
from __future__ import annotations

import logging

from pytorch_lightning import Callback

from transferlab.errors import ConfigError

log = logging.getLogger(__name__)

BN_POLICIES = ("train", "frozen")  # checked with the other config values (config.SCHEMA)


class Strategy(Callback):
    name = "strategy"
    needs_stages = False  # True when the strategy freezes some stages and not others

    def __init__(self, bn: str = "train", cache_features: bool | None = None, name: str | None = None):
        """``name`` relabels the strategy in metrics and reports (e.g. finetune from random init = 'scratch')."""
        if name:
            self.name = name
        self.bn = bn
        self.cache_features = cache_features
        self._frozen_norms = []
        self._last_frozen = None

    # --- what a strategy decides -------------------------------------------------------------
    def frozen_stages(self, epoch: int, num_stages: int) -> set[int]:
        """Backbone stages (0 = input side) whose parameters do not train in this epoch."""
        return set()

    def lr_scale(self, stage: int, num_stages: int) -> float:
        """Fixed learning-rate multiplier of a backbone stage, applied on top of the optimizer's."""
        return 1.0

    def check(self, num_stages: int, max_epochs: int) -> None:
        """Raise ConfigError before training when the settings do not fit the model."""

    def check_fits(self, model, max_epochs: int) -> None:
        if self.needs_stages and not model.has_stages:
            raise ConfigError(f"strategy '{self.name}' freezes some backbone stages and not others, but model "
                              f"'{model.family.cfg.get('name')}' has no stage grouping; use finetune, "
                              f"linear_probe or lp_ft, or a model whose family groups its layers")
        self.check(model.num_stages, max_epochs)

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

    # --- applying it (Lightning hooks) -----------------------------------------------------------
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
        self._set_norm_modes()
        if frozen != self._last_frozen:
            log.info("epoch %d: %s freezes stages %s of %d (%d trainable parameters)", epoch, self.name,
                     sorted(frozen) or "none", model.num_stages,
                     sum(p.numel() for p in model.parameters() if p.requires_grad))
            self._last_frozen = frozen

    def _set_norm_modes(self) -> None:
        for m in self._frozen_norms:
            m.eval()

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.apply(pl_module.model, trainer.current_epoch)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        # Lightning may put the whole module back into train mode (e.g. after validation).
        self._set_norm_modes()
