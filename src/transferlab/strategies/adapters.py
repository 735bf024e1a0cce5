"""Parameter-efficient strategies: the backbone stays the source's except a small set of tensors.

``ParameterEfficient`` trains what ``trains(name)`` picks (biases for BitFit, adapters for LoRA and
(IA)³) and every head; ``PeftStrategy`` adds the adapters with ``peft`` itself
(``inject_adapter_in_model``: into the plain backbone module, so the family's stages, the heads,
multi-task, layer decay and the optimizer's groups keep working on it) and merges them away after
training (``merge``), so a finished run's ``best.ckpt`` is an ordinary backbone. Targets are checked
here, before training, because peft's own errors come mid-build and do not say what would match.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Literal

from transferlab.errors import ConfigError
from transferlab.settings import NON_NEGATIVE, POSITIVE, optional, setting
from transferlab.strategies.base import Strategy

log = logging.getLogger(__name__)
TARGETS = "a list of module names (matched as peft does: the name or its last parts) or one regular expression"


@dataclass(kw_only=True)
class ParameterEfficient(Strategy):
    """Trains only what ``trains`` picks in the backbone, at all epochs; BatchNorm follows ``bn``
    (``train``: its statistics follow the target data and are saved with the weights; its affine
    weights train only when ``trains`` picks them)."""
    bn: Literal["train", "frozen"] = "train"
    adapter_lr_mult: float = setting(1.0, POSITIVE, tune=True)  # the strategy's tensors train at optimizer.lr x this
    adapter_weight_decay: float | None = setting(None, optional(NON_NEGATIVE))  # null: optimizer.weight_decay

    def trains(self, name: str) -> bool:
        raise NotImplementedError

    def is_adapter(self, name: str) -> bool:
        return self.trains(name)

    def own_group(self):
        return self.is_adapter, self.adapter_lr_mult, self.adapter_weight_decay

    def backbone_always_frozen(self, num_stages, max_epochs):
        return False

    def apply(self, model, epoch: int) -> None:
        for name, p in model.backbone.named_parameters():
            p.requires_grad_(self.trains(name))
        self._frozen_norms = model.norm_modules() if self.bn == "frozen" else []
        if self.bn == "frozen":
            for m in self._frozen_norms:
                for p in m.parameters(recurse=False):
                    p.requires_grad_(False)
        self.set_norm_modes()
        if self._last_frozen is None:
            self._last_frozen = set()
            trained = sum(p.numel() for p in model.backbone.parameters() if p.requires_grad)
            heads = sum(p.numel() for p in model.heads.parameters())
            total = sum(p.numel() for p in model.backbone.parameters())
            log.info("%s trains %d of the backbone's %d parameters (%.2f%%) and the heads' %d", self.label, trained,
                     total, 100 * trained / max(total, 1), heads)


def _layers():
    import torch

    return (torch.nn.Linear, torch.nn.Conv2d)


def _matches(name: str, pattern) -> bool:
    """peft's rule: a string is a regular expression over the full name; a list entry matches the name
    or its last dotted parts."""
    if isinstance(pattern, str):
        return re.fullmatch(pattern, name) is not None
    return any(name == p or name.endswith("." + p) for p in pattern)


def unmatched(names: list[str], pattern) -> list:
    """The parts of ``pattern`` (one regular expression, or each name of a list) that match none of ``names``."""
    if isinstance(pattern, str):
        return [] if any(_matches(n, pattern) for n in names) else [pattern]
    return [p for p in pattern if not any(_matches(n, [p]) for n in names)]


def default_targets(backbone, families: list[set[str]]) -> list[str]:
    """The Linear layers of the first name set of ``families`` that the backbone has every name of (a
    timm ViT's attention and MLP, a BERT-like encoder's), else every Linear layer and convolution that
    is not grouped (a ConvNet's; depthwise convolutions keep their few weights)."""
    import torch

    linear = [n for n, m in backbone.named_modules() if isinstance(m, torch.nn.Linear)]
    for names in families:
        if all(any(_matches(n, [name]) for n in linear) for name in names):
            return [n for n in linear if _matches(n, list(names))]
    return [n for n, m in backbone.named_modules() if isinstance(m, _layers()) and getattr(m, "groups", 1) == 1]


def exactly(names: list[str]) -> str:
    """Full module names as the one regular expression peft matches whole: a list would also adapt every
    module whose name merely ends in one of them (``conv1`` is also ``layer1.0.conv1``)."""
    return "^(?:" + "|".join(re.escape(n) for n in names) + ")$"


def _width(module) -> int:
    """The largest rank an update of this layer's weight can have."""
    import torch

    if isinstance(module, torch.nn.Linear):
        return min(module.in_features, module.out_features)
    kernel = module.weight[0].numel()  # in_channels / groups x kernel height x width
    return min(module.out_channels, kernel)


@dataclass(kw_only=True)
class PeftStrategy(ParameterEfficient):
    """A peft tuner injected into the backbone. ``target_modules``: null = the family's default."""
    target_modules: list[str] | str | None = setting(None, (lambda v: v is None or isinstance(v, str) or (
        isinstance(v, (list, tuple)) and len(v) > 0 and all(isinstance(x, str) for x in v)), TARGETS))
    adapts = True
    adapter_name = "default"
    defaults = ()  # name sets tried in order by ``default_targets``
    marker = ""  # what the tuner's parameter names contain (lora_, ia3_)

    def trains(self, name: str) -> bool:
        return self.marker in name

    def peft_config(self, targets: list[str], backbone):
        raise NotImplementedError

    def check_target(self, name: str, module) -> None:
        """Raise ConfigError when the tuner cannot adapt this layer."""

    def usable(self, module) -> bool:
        """Whether a layer the defaults chose can be adapted with these settings (else it is left out)."""
        return True

    def targets(self, backbone) -> list[str]:
        """The full names of the layers to adapt, checked: a pattern that matches nothing names what exists."""
        modules = dict(backbone.named_modules())
        if self.target_modules is None:
            found = default_targets(backbone, [set(d) for d in self.defaults])
        else:
            pattern = self.target_modules if isinstance(self.target_modules, str) else list(self.target_modules)
            if isinstance(pattern, str):
                try:
                    re.compile(pattern)
                except re.error as e:
                    raise ConfigError(f"strategy.target_modules={pattern!r} is not a regular expression ({e}); "
                                      f"valid: {TARGETS}") from None
            hits = [n for n in modules if n and _matches(n, pattern)]
            found = [n for n in hits if isinstance(modules[n], _layers())]
            kinds = {type(modules[n]).__name__ for n in hits} - {"Linear", "Conv2d"}
            missing = unmatched(found, pattern)
            if missing:
                layers = [n for n, m in modules.items() if isinstance(m, _layers())]
                why = (f"matches only {', '.join(sorted(kinds))} modules ({self.label} adapts Linear and Conv2d layers)"
                       if hits and kinds else "matches no module of the backbone")
                raise ConfigError(f"strategy.target_modules: {missing[0]!r} {why}; its Linear/Conv2d layers are "
                                  f"named e.g. {', '.join(layers[:20])}{' ...' if len(layers) > 20 else ''} "
                                  f"({len(layers)} in all); give {TARGETS}")
        if self.target_modules is None:  # a default leaves out what this tuner cannot adapt (SE convs narrower than r)
            kept = [n for n in found if self.usable(modules[n])]
            if len(kept) < len(found):
                log.info("%s leaves out %d of the default targets it cannot adapt, e.g. %s", self.label,
                         len(found) - len(kept), next(n for n in found if n not in kept))
            found = kept
        if not found:
            raise ConfigError(f"strategy={self.label}: the backbone has no Linear or ungrouped Conv2d layer to adapt; "
                              f"use strategy=bitfit or finetune")
        for name in found:
            self.check_target(name, modules[name])
        return found

    def prepare(self, model) -> None:
        from peft import inject_adapter_in_model

        targets = self.targets(model.backbone)
        inject_adapter_in_model(self.peft_config(targets, model.backbone), model.backbone, self.adapter_name)
        model.regroup()

    def updates(self, model) -> list:
        """Each adapted layer's change to its weight (merged minus source): what L2-SP pulls to zero."""
        from peft.tuners.tuners_utils import BaseTunerLayer

        out = []
        for module in model.backbone.modules():
            if isinstance(module, BaseTunerLayer):
                if hasattr(module, "get_delta_weight"):  # LoRA: (alpha / r) B A, in the weight's shape
                    out.append(module.get_delta_weight(self.adapter_name))
                else:  # (IA)³: W * (l - 1), l broadcast as peft merges it
                    scale = module.ia3_l[self.adapter_name]
                    if hasattr(module, "_get_ia3_scaling_for_weight"):
                        scale = module._get_ia3_scaling_for_weight(scale)
                    out.append(module.get_base_layer().weight * (scale - 1))
        return out

    def merge(self, model) -> None:
        """Fold every adapter into the weight it wraps and put the plain layer back (``merge_and_unload``)."""
        from peft.tuners.tuners_utils import BaseTunerLayer

        backbone = model.backbone
        for name, module in [(n, m) for n, m in backbone.named_modules() if isinstance(m, BaseTunerLayer)]:
            module.merge(adapter_names=[self.adapter_name])
            parent, _, child = name.rpartition(".")
            setattr(backbone.get_submodule(parent) if parent else backbone, child, module.get_base_layer())
        if hasattr(backbone, "peft_config"):
            del backbone.peft_config
        model.regroup()

    def save_adapter(self, model, folder) -> None:
        """The adapter alone, in peft's format (``adapter_config.json`` + ``adapter_model.safetensors``): on a
        fresh source backbone, ``inject_adapter_in_model`` + ``set_peft_model_state_dict`` restore it."""
        from peft import get_peft_model_state_dict
        from safetensors.torch import save_file

        backbone = model.backbone
        state = get_peft_model_state_dict(backbone, adapter_name=self.adapter_name)
        backbone.peft_config[self.adapter_name].save_pretrained(str(folder))
        save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, str(folder / "adapter_model.safetensors"))
