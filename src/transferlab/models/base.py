"""The backbone contract every model family meets, and the model built on it: a backbone plus one
head per task.

A family (``models/timm.py``, later text models) builds a backbone whose ``encode(inputs)`` turns a
batch mapping (``{"pixel_values": ...}`` for images) into pooled features ``[batch, num_features]``,
and says once how its parameters group into stages (coarse, for freezing) and layers (fine, for
layer decay). Everything downstream (strategies, optimizer groups, caching, heads) reads only this.
"""
from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from transferlab.errors import ConfigError




class Family:
    """How one kind of backbone is built, grouped, fed and preprocessed. One instance per model."""

    name = "family"
    norm_types: tuple[type, ...] = (nn.modules.batchnorm._BatchNorm,)  # statistics that freeze with a stage

    def __init__(self, cfg):
        self.cfg = cfg

    def create_backbone(self) -> nn.Module:
        raise NotImplementedError

    def groups(self, backbone: nn.Module, coarse: bool) -> dict[str, int] | None:
        """Parameter name -> ordinal stage (coarse) or layer (fine), input side first; None = no grouping."""
        return None

    def encode(self, backbone: nn.Module, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def preprocessing(self, backbone: nn.Module) -> dict:
        """What the data needs to feed this backbone (for timm: its pretrained data config)."""
        return {}

    def create_transform(self, preprocessing: dict, data_cfg, train: bool):
        """raw item -> input mapping, with the data config's augmentation when ``train``."""
        raise NotImplementedError

    def backbone_state(self, backbone: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A foreign state dict of this family's own model, reduced to what the backbone holds."""
        return state

    def no_weight_decay(self, backbone: nn.Module) -> set[str]:
        return set()

    def fingerprint(self) -> str:
        """What decides the model's inputs besides its config (a tokenizer file may change under the same
        path): part of a cached source run's key, so new inputs never meet weights learnt on old ones."""
        return ""


class TransferModel(nn.Module):
    """A shared backbone and a ``ModuleDict`` of heads, one per task; forward returns logits per task."""

    def __init__(self, backbone: nn.Module, heads: nn.ModuleDict, family: Family):
        super().__init__()
        self.backbone = backbone
        self.heads = heads
        self.family = family
        stages, layers = family.groups(backbone, coarse=True), family.groups(backbone, coarse=False)
        self.has_stages = stages is not None  # partial / gradual need a real grouping
        names = [name for name, _ in backbone.named_parameters()]
        self.stage_of = stages if stages is not None else dict.fromkeys(names, 0)
        self.layer_of = layers if layers is not None else dict.fromkeys(names, 0)
        self.num_stages = max(self.stage_of.values(), default=-1) + 1
        self.num_layers = max(self.layer_of.values(), default=-1) + 1

    def encode(self, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return self.family.encode(self.backbone, inputs)

    def forward(self, inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return self.forward_heads(self.encode(inputs))

    def forward_heads(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
        return {name: head(features) for name, head in self.heads.items()}

    def stage_modules(self, stage: int) -> list[nn.Module]:
        """Normalization layers of one stage, whose running statistics freeze with it."""
        return [m for name, m in self.backbone.named_modules() if isinstance(m, self.family.norm_types)
                and self.stage_of.get(f"{name}.weight", self.stage_of.get(f"{name}.bias")) == stage]

    def norm_modules(self) -> list[nn.Module]:
        return [m for m in self.backbone.modules() if isinstance(m, self.family.norm_types)]


def create_head(num_features: int, num_classes: int, hidden: int = 0, dropout: float = 0.0) -> nn.Module:
    """A linear head, or a one-hidden-layer MLP when ``hidden`` > 0."""
    if hidden <= 0:
        return nn.Sequential(nn.Dropout(dropout), nn.Linear(num_features, num_classes))
    return nn.Sequential(nn.Linear(num_features, hidden), nn.GELU(), nn.Dropout(dropout),
                         nn.Linear(hidden, num_classes))


def require_hub_copy(repo: str, filenames, explain) -> None:
    """Fail in seconds, not after minutes of the hub client's retries, when the hub is unreachable and
    nothing is cached; ``explain(why)`` turns the reason into the family's own message."""
    from huggingface_hub import constants, try_to_load_from_cache

    from transferlab.hub import unreachable

    if any(isinstance(try_to_load_from_cache(repo, f), str) for f in filenames):
        return
    why = unreachable(constants.HF_HUB_OFFLINE)
    if why:
        raise ConfigError(explain(f"{why}, and '{repo}' is not in the local cache"))
