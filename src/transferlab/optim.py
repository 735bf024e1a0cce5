"""Optimizers and schedules (``optimizer`` and ``scheduler`` groups): parameter groups built once,
with their learning-rate scale baked in.

Every backbone stage, fine layer and (no-)weight-decay kind gets its own group up front, so a
strategy that freezes and unfreezes stages never adds groups mid-run. A group's scale (stage scale
from the strategy x layer-wise decay x ``head_lr_mult`` for heads) is folded into its base ``lr``;
every scheduler here multiplies each group's own base lr, so the scale holds whatever schedule runs
(timm applies ``lr_scale`` only inside its own schedulers). torch is imported inside the factories:
the settings are checked while the plan resolves, before it loads.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from transferlab.metrics import ADAPTERS
from transferlab.registry import Registry
from transferlab.settings import FRACTION, NON_NEGATIVE, POSITIVE, Settings, setting

OPTIMIZERS = Registry("optimizer", "optimizer", modules=("transferlab.optim",))
SCHEDULERS = Registry("scheduler", "scheduler", modules=("transferlab.optim",))


@dataclass(kw_only=True)
class Optimizer(Settings):
    kind: str
    lr: float = setting(1e-3, POSITIVE, tune=True)  # base learning rate (the heads' is lr * head_lr_mult)
    weight_decay: float = setting(0.0, NON_NEGATIVE, tune=True)
    head_lr_mult: float = setting(10.0, POSITIVE, tune=True)
    layer_decay: float | None = setting(None, (lambda v: v is None or 0 < v <= 1, "null or a number in (0, 1]"),
                                        tune=True)

    def create(self, groups):
        raise NotImplementedError


@OPTIMIZERS.register("sgd")
@dataclass(kw_only=True)
class SGD(Optimizer):
    kind: str = "sgd"
    momentum: float = setting(0.9, FRACTION, tune=True)
    nesterov: bool = False

    def create(self, groups):
        import torch

        return torch.optim.SGD(groups, lr=self.lr, momentum=self.momentum, nesterov=self.nesterov)


@OPTIMIZERS.register("adam")
@dataclass(kw_only=True)
class Adam(Optimizer):
    kind: str = "adam"
    betas: tuple[float, ...] = setting((0.9, 0.999), (lambda v: len(v) == 2 and all(0 <= b < 1 for b in v),
                                                      "two numbers in [0, 1)"), tune=True)

    def create(self, groups):
        import torch

        return torch.optim.Adam(groups, lr=self.lr, betas=tuple(self.betas))


@OPTIMIZERS.register("adamw")
@dataclass(kw_only=True)
class AdamW(Adam):
    kind: str = "adamw"

    def create(self, groups):
        import torch

        return torch.optim.AdamW(groups, lr=self.lr, betas=tuple(self.betas))


def param_groups(model, weight_decay: float, head_lr_mult: float = 1.0, layer_decay: float | None = None,
                 stage_lr_scale: Callable[[int], float] = lambda stage: 1.0, extra=(), own=None,
                 decays: Callable[[str], bool] = lambda part: True) -> list[dict]:
    """Groups keyed by (stage, layer, decay) for the backbone, then heads, then ``extra`` parameters.

    Biases, norm weights (any tensor with one dimension) and the backbone's ``no_weight_decay()``
    names get no weight decay. Layer ``i`` of ``L`` fine layers trains at ``layer_decay ** (L - i)``.
    ``own``: (owns(name), lr scale, weight decay or None) of the backbone tensors a strategy trains alone
    (adapters, BitFit's biases): they form the ``adapters`` groups. ``decays(part)``: False where a
    regulariser replaces weight decay (L2-SP) for ``backbone``, ``adapters`` or ``heads``.
    """
    skip = model.family.no_weight_decay(model.backbone)
    groups: dict[tuple, dict] = {}

    def add(key, p, scale, decay, rate=weight_decay):
        g = groups.setdefault(key, {"params": [], "lr_scale": scale, "weight_decay": rate if decay else 0.0,
                                    "name": ".".join(str(k) for k in key)})
        g["params"].append(p)

    for name, p in model.backbone.named_parameters():
        stage, layer = model.stage_of.get(name, 0), model.layer_of.get(name, 0)
        if own is not None and own[0](name):
            decay = p.ndim > 1 and decays("adapters")
            add((ADAPTERS, "decay" if decay else "no_decay"), p, own[1], decay,
                weight_decay if own[2] is None else own[2])
            continue
        decay = p.ndim > 1 and name not in skip and decays("backbone")
        scale = stage_lr_scale(stage) * (layer_decay ** (model.num_layers - layer) if layer_decay else 1.0)
        key = ("backbone", f"stage{stage}", f"layer{layer}" if layer_decay else "all", "decay" if decay else "no_decay")
        add(key, p, scale, decay)
    for name, p in model.heads.named_parameters():
        decay = p.ndim > 1 and decays("heads")
        add(("heads", "decay" if decay else "no_decay"), p, head_lr_mult, decay)
    for p in extra:
        add(("extra", "no_decay"), p, 1.0, False)
    return list(groups.values())


def create_optimizer(model, cfg, stage_lr_scale=lambda stage: 1.0, extra=(), own=None, decays=lambda part: True):
    """timm-style factory: ``cfg.kind`` picks the optimizer (``cfg`` a config node or its settings);
    ``own`` and ``decays`` as ``param_groups``."""
    settings = cfg if isinstance(cfg, Optimizer) else OPTIMIZERS.parse(cfg)
    groups = param_groups(model, settings.weight_decay, settings.head_lr_mult, settings.layer_decay, stage_lr_scale,
                          extra, own, decays)
    for g in groups:
        g["lr"] = settings.lr * g["lr_scale"]
    return settings.create(groups)


@dataclass(kw_only=True)
class Scheduler(Settings):
    """A per-step schedule; warm-up (linear) and step sizes are given in epochs."""
    kind: str
    warmup_epochs: float = setting(0, NON_NEGATIVE, tune=True)

    def create(self, opt, warmup: int, total: int, per_epoch: int):
        raise NotImplementedError


def _warm(warmup: int, then: Callable[[int], float]) -> Callable[[int], float]:
    return lambda i: (i + 1) / warmup if i < warmup else then(i)


@SCHEDULERS.register("cosine")
@dataclass(kw_only=True)
class Cosine(Scheduler):
    """Cosine decay to ``min_lr_ratio`` of each group's rate after the warm-up."""
    kind: str = "cosine"
    min_lr_ratio: float = setting(0.0, FRACTION, tune=True)

    def create(self, opt, warmup, total, per_epoch):
        import torch

        def factor(step: int) -> float:
            progress = min(1.0, (step - warmup) / max(1, total - warmup))
            return self.min_lr_ratio + (1 - self.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
        return torch.optim.lr_scheduler.LambdaLR(opt, _warm(warmup, factor))


@SCHEDULERS.register("step")
@dataclass(kw_only=True)
class Step(Scheduler):
    """Multiplied by ``gamma`` every ``step_epochs`` epochs after the warm-up."""
    kind: str = "step"
    step_epochs: float = setting(5, POSITIVE)
    gamma: float = setting(0.1, POSITIVE)

    def create(self, opt, warmup, total, per_epoch):
        import torch

        every = max(1, int(self.step_epochs * per_epoch))
        return torch.optim.lr_scheduler.LambdaLR(opt, _warm(warmup, lambda i: self.gamma ** (i // every)))


@SCHEDULERS.register("onecycle")
@dataclass(kw_only=True)
class OneCycle(Scheduler):
    kind: str = "onecycle"
    pct_start: float = setting(0.3, (lambda v: 0 < v < 1, "a number in (0, 1)"))

    def create(self, opt, warmup, total, per_epoch):
        import torch

        return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=[g["lr"] for g in opt.param_groups],
                                                   total_steps=max(total, 1), pct_start=self.pct_start)


@SCHEDULERS.register("constant")
@dataclass(kw_only=True)
class Constant(Scheduler):
    kind: str = "constant"

    def create(self, opt, warmup, total, per_epoch):
        import torch

        return torch.optim.lr_scheduler.LambdaLR(opt, _warm(warmup, lambda i: 1.0))


def create_scheduler(optimizer, cfg, total_steps: int, steps_per_epoch: int) -> dict:
    """A per-step schedule in Lightning's dict form (``cfg`` a config node or its settings)."""
    settings = cfg if isinstance(cfg, Scheduler) else SCHEDULERS.parse(cfg)
    warmup = int(round(settings.warmup_epochs * steps_per_epoch))
    return {"scheduler": settings.create(optimizer, warmup, total_steps, steps_per_epoch), "interval": "step",
            "frequency": 1}


__all__ = ["OPTIMIZERS", "SCHEDULERS", "Optimizer", "Scheduler", "create_optimizer", "create_scheduler",
           "param_groups"]
