"""The model a run trains: a family's backbone plus one head per task (torch from here on)."""
from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from transferlab.models.base import Family


class TransferModel(nn.Module):
    """A shared backbone and a ``ModuleDict`` of heads, one per task; forward returns logits per task."""

    def __init__(self, backbone: nn.Module, heads: nn.ModuleDict, family: Family):
        super().__init__()
        self.backbone = backbone
        self.heads = heads
        self.family = family
        self.regroup()

    def regroup(self) -> None:
        """Stages and fine layers of the backbone's parameters, read from their names by the family's
        grouping; again after a strategy adds or merges away modules (adapters rename what they wrap)."""
        backbone, family = self.backbone, self.family
        stages, layers = family.groups(backbone, coarse=True), family.groups(backbone, coarse=False)
        self.has_stages = stages is not None  # partial / gradual need a real grouping
        names = [name for name, _ in backbone.named_parameters()]
        self.stage_of = stages if stages is not None else dict.fromkeys(names, 0)
        self.layer_of = layers if layers is not None else dict.fromkeys(names, 0)
        self.num_stages = max(self.stage_of.values(), default=-1) + 1
        self.num_layers = max(self.layer_of.values(), default=-1) + 1

    def encode(self, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return self.family.encode(self.backbone, inputs)

    def encode_tokens(self, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return self.family.encode_tokens(self.backbone, inputs)

    def forward(self, inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return self.forward_heads(self.encode(inputs))

    def forward_heads(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
        return {name: head(features) for name, head in self.heads.items()}

    def stage_modules(self, stage: int) -> list[nn.Module]:
        """Normalization layers of one stage, whose running statistics freeze with it."""
        kinds = self.family.norm_types()
        return [m for name, m in self.backbone.named_modules() if isinstance(m, kinds)
                and self.stage_of.get(f"{name}.weight", self.stage_of.get(f"{name}.bias")) == stage]

    def norm_modules(self) -> list[nn.Module]:
        kinds = self.family.norm_types()
        return [m for m in self.backbone.modules() if isinstance(m, kinds)]


class NoPooler(nn.Module):
    """Stands in for a transformers model's pooler, without its weights (pooling is ours, ``model.pooling``,
    and unused weights would stall DDP): the first token's state, for models that use the pooled output."""

    def forward(self, hidden_states, *args, **kwargs):
        return hidden_states[:, 0]


def create_head(num_features: int, num_classes: int, hidden: int = 0, dropout: float = 0.0) -> nn.Module:
    """A linear head, or a one-hidden-layer MLP when ``hidden`` > 0."""
    if hidden <= 0:
        return nn.Sequential(nn.Dropout(dropout), nn.Linear(num_features, num_classes))
    return nn.Sequential(nn.Linear(num_features, hidden), nn.GELU(), nn.Dropout(dropout),
                         nn.Linear(hidden, num_classes))


def build_network(family: Family, tasks, input_size: int | None = None) -> TransferModel:
    """Backbone + heads for the family's settings and the run's (complete) tasks, with initial weights;
    ``input_size``: the pixels of the images it will read (None: the model's own size)."""
    backbone = family.create_backbone(input_size)
    width = family.feature_size(backbone)
    heads = nn.ModuleDict({t.name: create_head(width, t.num_classes, family.head.hidden, family.head.dropout)
                           for t in tasks})
    return TransferModel(backbone, heads, family)
