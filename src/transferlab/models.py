"""Source models: a backbone (inputs -> pooled features), one head per task, and source weights.

The contract between backbone and heads is plain PyTorch so a text backbone can plug in later: a
backbone is any module whose forward returns pooled features ``[batch, num_features]`` and which
says how its parameters group into stages (``stage_of``) and fine layers (``layer_of``). timm models
get both from timm's own ``group_matcher``, so ResNets, ViTs and ConvNeXts freeze alike.
"""
from __future__ import annotations

import logging
import os
import socket
from pathlib import Path
from urllib.parse import urlparse

import timm
import torch
from torch import nn

from transferlab.errors import CheckpointError, ConfigError, suggest

log = logging.getLogger(__name__)

NORM_TYPES = (nn.modules.batchnorm._BatchNorm,)


class TransferModel(nn.Module):
    """A shared backbone and a ``ModuleDict`` of heads, one per task; forward returns logits per task."""

    def __init__(self, backbone: nn.Module, heads: nn.ModuleDict):
        super().__init__()
        self.backbone = backbone
        self.heads = heads
        self.stage_of = _param_groups(backbone, coarse=True)
        self.layer_of = _param_groups(backbone, coarse=False)
        self.num_stages = max(self.stage_of.values(), default=-1) + 1
        self.num_layers = max(self.layer_of.values(), default=-1) + 1

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.forward_heads(self.backbone(x))

    def forward_heads(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
        return {name: head(features) for name, head in self.heads.items()}

    def stage_modules(self, stage: int) -> list[nn.Module]:
        """Normalization layers of one stage, whose running statistics freeze with it."""
        return [m for name, m in self.backbone.named_modules() if isinstance(m, NORM_TYPES)
                and self.stage_of.get(f"{name}.weight", self.stage_of.get(f"{name}.bias")) == stage]

    def norm_modules(self) -> list[nn.Module]:
        return [m for m in self.backbone.modules() if isinstance(m, NORM_TYPES)]


def _param_groups(backbone: nn.Module, coarse: bool) -> dict[str, int]:
    """Map each parameter name to its ordinal stage (coarse) or layer (fine), input side first."""
    if not hasattr(backbone, "group_matcher"):
        return {name: 0 for name, _ in backbone.named_parameters()}
    from timm.models import group_parameters

    groups = group_parameters(backbone, backbone.group_matcher(coarse=coarse))
    return {name: i for i, names in enumerate(groups.values()) for name in names}


def create_head(num_features: int, num_classes: int, hidden: int = 0, dropout: float = 0.0) -> nn.Module:
    """A linear head, or a one-hidden-layer MLP when ``hidden`` > 0."""
    if hidden <= 0:
        return nn.Sequential(nn.Dropout(dropout), nn.Linear(num_features, num_classes))
    return nn.Sequential(nn.Linear(num_features, hidden), nn.GELU(), nn.Dropout(dropout),
                         nn.Linear(hidden, num_classes))


def create_backbone(name: str, pretrained: bool = False, drop_rate: float = 0.0,
                    drop_path_rate: float | None = None, **kwargs) -> nn.Module:
    """A timm model with its classifier removed (``num_classes=0``) so it returns pooled features."""
    if not timm.is_model(name.split(".")[0]):
        raise ConfigError(f"unknown model '{name}': not a timm model name; "
                          f"{suggest(name, timm.list_models())} (see timm.list_models())")
    if drop_path_rate is not None:
        kwargs["drop_path_rate"] = drop_path_rate
    if pretrained:
        _check_hub_weights(name)
    try:
        return timm.create_model(name, pretrained=pretrained, num_classes=0, drop_rate=drop_rate, **kwargs)
    except (OSError, RuntimeError) as e:
        if not pretrained:
            raise
        raise ConfigError(_no_weights_message(name, str(e).splitlines()[0])) from None


def _no_weights_message(name: str, why: str) -> str:
    return (f"could not load pretrained weights for model '{name}': {why}. Supply weights another way: "
            f"model.checkpoint=/path/to/weights.safetensors (or .pth, or a transferlab run's .ckpt), "
            f"pre-download them into the Hugging Face cache (HF_HOME) on a machine with network, "
            f"or train from scratch with model.pretrained=false.")


def _check_hub_weights(name: str) -> None:
    """Fail in seconds, not after minutes of retries, when the hub is unreachable and nothing is cached."""
    from huggingface_hub import constants, try_to_load_from_cache
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(name)
    if cfg is None or not cfg.hf_hub_id:
        return  # weights come from a URL or file: timm reports its own error
    repo = cfg.hf_hub_id.split("@")[0]
    for filename in ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin"):
        if isinstance(try_to_load_from_cache(repo, filename), str):
            return
    if constants.HF_HUB_OFFLINE:
        raise ConfigError(_no_weights_message(name, f"HF_HUB_OFFLINE is set and '{repo}' is not in the local cache"))
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname
    try:
        socket.create_connection((host, 443), timeout=3).close()
    except OSError as e:
        raise ConfigError(_no_weights_message(name, f"the hub ({host}) is unreachable ({e}) "
                                                    f"and '{repo}' is not in the local cache")) from None


def create_model(model_cfg, tasks) -> TransferModel:
    """Build backbone + heads from the ``model`` config group and the run's tasks, then load source weights."""
    backbone = create_backbone(model_cfg.name, pretrained=model_cfg.pretrained, drop_rate=model_cfg.drop_rate,
                               drop_path_rate=model_cfg.get("drop_path_rate"), **(model_cfg.get("kwargs") or {}))
    head_cfg = model_cfg.get("head") or {}
    heads = nn.ModuleDict({t.name: create_head(backbone.num_features, t.num_classes, head_cfg.get("hidden", 0),
                                               head_cfg.get("dropout", 0.0)) for t in tasks})
    model = TransferModel(backbone, heads)
    if model_cfg.get("checkpoint"):
        load_source_weights(model, model_cfg.checkpoint, tasks)
    if model_cfg.get("grad_checkpointing"):
        if not hasattr(backbone, "set_grad_checkpointing"):
            raise ConfigError(f"model '{model_cfg.name}' does not support model.grad_checkpointing=true")
        backbone.set_grad_checkpointing(True)  # recompute activations in backward: less memory, ~30% more compute
    if model_cfg.get("channels_last"):
        model.to(memory_format=torch.channels_last)  # faster convolutions with mixed precision on tensor cores
    return model


def read_checkpoint(path: str | os.PathLike) -> dict:
    """A foreign file, tensors and plain containers only (``weights_only``): nothing in it can run code.

    Returns ``{"state_dict": {name: tensor}, ...}`` for safetensors, plain torch state dicts and
    Lightning checkpoints alike (a Lightning checkpoint keeps its other entries, e.g. hyper_parameters).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint '{path}' does not exist (model.checkpoint / ckpt_path must name a "
                              f".ckpt, .pth, .bin or .safetensors file)")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return {"state_dict": load_file(str(path))}
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any failure to parse means the file is unusable
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"cannot load checkpoint '{path}': {first}. Only tensor files are accepted "
                              f"(loaded with weights_only=True); a truncated file or a pickle of other "
                              f"objects is refused.") from None
    if isinstance(ckpt, dict):
        for key in ("state_dict", "model", "state_dict_ema"):
            if isinstance(ckpt.get(key), dict):
                ckpt = dict(ckpt, state_dict=ckpt[key])
                break
        else:
            ckpt = {"state_dict": ckpt}
    state = ckpt.get("state_dict") if isinstance(ckpt, dict) else None
    if not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"checkpoint '{path}' holds no state dict of tensors")
    return ckpt


def load_source_weights(model: TransferModel, path, tasks) -> None:
    """Load a backbone, and the heads of tasks with the same name, class count and class names, from a
    transferlab or timm checkpoint. Other heads stay freshly initialised (the usual transfer case)."""
    ckpt = read_checkpoint(path)
    state = ckpt["state_dict"]
    prefix = "model.backbone." if any(k.startswith("model.backbone.") for k in state) else ""
    backbone_state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    if not prefix:  # a plain timm state dict: drop its classifier, the heads are ours
        classifier = model.backbone.pretrained_cfg.get("classifier", "") if hasattr(model.backbone, "pretrained_cfg") else ""
        classifiers = classifier if isinstance(classifier, (list, tuple)) else [classifier]
        backbone_state = {k: v for k, v in backbone_state.items()
                          if not any(c and k.startswith(c + ".") for c in classifiers)}
    own = model.backbone.state_dict()
    missing = sorted(set(own) - set(backbone_state))
    unexpected = sorted(set(backbone_state) - set(own))
    wrong_shape = sorted(k for k in set(own) & set(backbone_state) if own[k].shape != backbone_state[k].shape)
    bad = missing + unexpected + wrong_shape
    if bad:
        name = getattr(model.backbone, "default_cfg", {}).get("architecture", type(model.backbone).__name__)
        shown = "; ".join([f"missing {k}" for k in missing[:3]] + [f"unexpected {k}" for k in unexpected[:3]] +
                          [f"{k}: {tuple(backbone_state[k].shape)} vs {tuple(own[k].shape)}" for k in wrong_shape[:3]])
        raise CheckpointError(f"checkpoint '{path}' does not match model '{name}': {len(bad)} of {len(own)} backbone "
                              f"keys mismatched ({len(missing)} missing, {len(unexpected)} unexpected, "
                              f"{len(wrong_shape)} of another shape), e.g. {shown}. Choose the model the checkpoint "
                              f"was trained with (model.name=...).")
    model.backbone.load_state_dict(backbone_state)
    source_classes = {t["name"]: t.get("class_names") for t in ckpt.get("hyper_parameters", {}).get("tasks", [])}
    for task in tasks:
        head = model.heads[task.name]
        head_state = {k[len(f"model.heads.{task.name}."):]: v for k, v in state.items()
                      if k.startswith(f"model.heads.{task.name}.")}
        own_head = head.state_dict()
        same_shape = head_state.keys() == own_head.keys() and all(v.shape == own_head[k].shape for k, v in head_state.items())
        same_labels = source_classes.get(task.name) in (None, task.class_names)
        if same_shape and same_labels:
            head.load_state_dict(head_state)
            log.info("head '%s' loaded from %s", task.name, path)
        else:
            why = "another class count" if head_state and not same_shape else (
                "other classes" if head_state else "no head of this task")
            log.info("head '%s' newly initialised: the source has %s", task.name, why)
