"""Optimizers and schedules: parameter groups built once, with their learning-rate scale baked in.

Every backbone stage, fine layer and (no-)weight-decay kind gets its own group up front, so a
strategy that freezes and unfreezes stages never adds groups mid-run. A group's scale (stage scale
from the strategy x layer-wise decay x ``head_lr_mult`` for heads) is folded into its base ``lr``;
every scheduler here multiplies each group's own base lr, so the scale holds whatever schedule runs
(timm applies ``lr_scale`` only inside its own schedulers).
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch

from transferlab.choices import OPTIMIZERS, SCHEDULERS  # their entries are the functions below
from transferlab.errors import ConfigError


# OPTIMIZERS: name -> (groups, cfg) -> optimizer; each reads its own keys of the optimizer config
def sgd(groups, cfg) -> torch.optim.Optimizer:
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.get("momentum", 0.9), nesterov=cfg.get("nesterov", False))


def adam(groups, cfg) -> torch.optim.Optimizer:
    return torch.optim.Adam(groups, lr=cfg.lr, betas=tuple(cfg.get("betas", (0.9, 0.999))))


def adamw(groups, cfg) -> torch.optim.Optimizer:
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.get("betas", (0.9, 0.999))))


def param_groups(model, weight_decay: float, head_lr_mult: float = 1.0, layer_decay: float | None = None,
                 stage_lr_scale: Callable[[int], float] = lambda stage: 1.0, extra=()) -> list[dict]:
    """Groups keyed by (stage, layer, decay) for the backbone, then heads, then ``extra`` parameters.

    Biases, norm weights (any tensor with one dimension) and the backbone's ``no_weight_decay()``
    names get no weight decay. Layer ``i`` of ``L`` fine layers trains at ``layer_decay ** (L - i)``.
    """
    skip = model.family.no_weight_decay(model.backbone)
    groups: dict[tuple, dict] = {}

    def add(key, name, p, scale, decay):
        g = groups.setdefault(key, {"params": [], "lr_scale": scale, "weight_decay": weight_decay if decay else 0.0,
                                    "name": ".".join(str(k) for k in key)})
        g["params"].append(p)

    for name, p in model.backbone.named_parameters():
        stage, layer = model.stage_of.get(name, 0), model.layer_of.get(name, 0)
        decay = p.ndim > 1 and name not in skip
        scale = stage_lr_scale(stage) * (layer_decay ** (model.num_layers - layer) if layer_decay else 1.0)
        key = ("backbone", f"stage{stage}", f"layer{layer}" if layer_decay else "all", "decay" if decay else "no_decay")
        add(key, name, p, scale, decay)
    for name, p in model.heads.named_parameters():
        add(("heads", "decay" if p.ndim > 1 else "no_decay"), name, p, head_lr_mult, p.ndim > 1)
    for p in extra:
        add(("extra", "no_decay"), "", p, 1.0, False)
    return list(groups.values())


def create_optimizer(model, cfg, stage_lr_scale=lambda stage: 1.0, extra=()) -> torch.optim.Optimizer:
    """timm-style factory: ``cfg.name`` picks the class, the rest of ``cfg`` its arguments."""
    make = OPTIMIZERS.get(cfg.name)
    if not isinstance(cfg.lr, (int, float)) or cfg.lr <= 0:
        raise ConfigError(f"optimizer.lr={cfg.lr!r}; the learning rate must be a positive number")
    groups = param_groups(model, cfg.weight_decay, cfg.head_lr_mult, cfg.get("layer_decay"), stage_lr_scale, extra)
    for g in groups:
        g["lr"] = cfg.lr * g["lr_scale"]
    return make(groups, cfg)


# SCHEDULERS: name -> (optimizer, cfg, warmup, total, per_epoch) -> scheduler; warm-up is linear, in steps
def cosine(opt, cfg, warmup: int, total: int, per_epoch: int):
    """Cosine decay to ``min_lr_ratio`` of each group's rate after the warm-up."""
    min_ratio = cfg.get("min_lr_ratio", 0.0)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


def step(opt, cfg, warmup: int, total: int, per_epoch: int):
    """Multiplied by ``gamma`` every ``step_epochs`` epochs after the warm-up."""
    every, gamma = max(1, int(cfg.step_epochs * per_epoch)), cfg.gamma
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda i: (i + 1) / warmup if i < warmup else gamma ** (i // every))


def onecycle(opt, cfg, warmup: int, total: int, per_epoch: int):
    return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=[g["lr"] for g in opt.param_groups],
                                               total_steps=max(total, 1), pct_start=cfg.pct_start)


def constant(opt, cfg, warmup: int, total: int, per_epoch: int):
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda i: (i + 1) / warmup if i < warmup else 1.0)


def create_scheduler(optimizer, cfg, total_steps: int, steps_per_epoch: int) -> dict:
    """A per-step schedule in Lightning's dict form; warm-up and step size are given in epochs."""
    make = SCHEDULERS.get(cfg.name)
    warmup = int(round(cfg.get("warmup_epochs", 0) * steps_per_epoch))
    return {"scheduler": make(optimizer, cfg, warmup, total_steps, steps_per_epoch), "interval": "step", "frequency": 1}
