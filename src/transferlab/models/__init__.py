"""Source models: a backbone from a model family (``model.family``), one head per task, source weights.

``models/base.py`` holds the contract and the family registry, one file per family registers itself
(``models/timm.py``); ``create_model`` is the only place a model is assembled.
"""
from __future__ import annotations

from torch import nn

from transferlab.models import hf as _hf  # noqa: F401 - registers the hf family (transformers imported on use)
from transferlab.models import timm as _timm  # noqa: F401 - registers the timm family
from transferlab.models.base import FAMILIES, Family, TransferModel, create_head

__all__ = ["FAMILIES", "Family", "TransferModel", "create_head", "create_model"]


def create_model(model_cfg, tasks) -> TransferModel:
    """Backbone + heads for the ``model`` config and the run's (complete) tasks, then source weights."""
    from transferlab.checkpoints import load_source_weights

    family = FAMILIES.create(model_cfg.family, model_cfg)
    backbone = family.create_backbone()
    head_cfg = model_cfg.get("head") or {}
    heads = nn.ModuleDict({t.name: create_head(backbone.num_features, t.num_classes, head_cfg.get("hidden", 0),
                                               head_cfg.get("dropout", 0.0)) for t in tasks})
    model = TransferModel(backbone, heads, family)
    if model_cfg.get("checkpoint"):
        load_source_weights(model, model_cfg.checkpoint, tasks)
    return model
