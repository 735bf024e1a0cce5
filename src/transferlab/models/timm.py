"""The timm family: any ``timm`` model as an image backbone (``model.kind=timm``, the default).

timm's own ``group_matcher`` gives the stages and layers, so ResNets, ViTs and ConvNeXts freeze and
decay alike; its pretrained data config gives mean/std/input size to the image transforms. timm and
torch are imported inside the methods: the settings are checked before they load.
"""
from __future__ import annotations

from dataclasses import dataclass

from transferlab.errors import ConfigError, suggest
from transferlab.models import FAMILIES
from transferlab.models.base import Family, require_hub_copy
from transferlab.settings import FRACTION, setting


class ImageInputs:
    """An image transform whose output is the batch mapping the backbone reads."""

    def __init__(self, transform):
        self.transform = transform

    def __call__(self, image) -> dict:
        return {"pixel_values": self.transform(image)}

    def __repr__(self) -> str:  # part of the feature-cache key
        return repr(self.transform)


@FAMILIES.register("timm", modality="image")
@dataclass(kw_only=True)
class TimmFamily(Family):
    kind: str = "timm"
    pretrained: bool = True  # timm's hub weights
    drop_path_rate: float = setting(0.0, FRACTION, tune=True)  # stochastic depth (models that support it)
    kwargs: dict = setting(factory=dict)  # any other timm.create_model keyword (e.g. img_size for ViTs)
    channels_last: bool = False  # NHWC memory layout: faster convolutions under mixed precision on GPUs

    def create_backbone(self):
        import torch

        backbone = create_backbone(self.name, pretrained=self.pretrained, drop_rate=self.drop_rate,
                                   drop_path_rate=self.drop_path_rate, **self.kwargs)
        if self.grad_checkpointing:
            if not hasattr(backbone, "set_grad_checkpointing"):
                raise ConfigError(f"model '{self.name}' does not support model.grad_checkpointing=true")
            backbone.set_grad_checkpointing(True)  # recompute activations in backward: less memory, ~30% more compute
        if self.channels_last:
            backbone.to(memory_format=torch.channels_last)  # faster convolutions with mixed precision on tensor cores
        return backbone

    def groups(self, backbone, coarse):
        if not hasattr(backbone, "group_matcher"):
            return None
        from timm.models import group_parameters

        groups = group_parameters(backbone, backbone.group_matcher(coarse=coarse))
        return {name: i for i, names in enumerate(groups.values()) for name in names}

    def encode(self, backbone, inputs):
        import torch

        x = inputs["pixel_values"]
        if self.channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return backbone(x)

    def preprocessing(self, backbone):
        from timm.data import resolve_model_data_config

        return resolve_model_data_config(backbone)

    def create_transform(self, preprocessing, data, train, tasks=()):
        from transferlab.data.transforms import create_transform

        for task in tasks:
            if task.token_level:
                self.encode_tokens(None, {})  # the family's "needs a text model" error
        return ImageInputs(create_transform(preprocessing, data.augment, train=train, input_size=data.input_size))

    def backbone_state(self, backbone, state):
        """A plain timm state dict: drop its classifier, the heads are ours."""
        classifier = backbone.pretrained_cfg.get("classifier", "") if hasattr(backbone, "pretrained_cfg") else ""
        classifiers = classifier if isinstance(classifier, (list, tuple)) else [classifier]
        return {k: v for k, v in state.items() if not any(c and k.startswith(c + ".") for c in classifiers)}

    def no_weight_decay(self, backbone):
        return set(backbone.no_weight_decay()) if hasattr(backbone, "no_weight_decay") else set()


def create_backbone(name: str, pretrained: bool = False, drop_rate: float = 0.0,
                    drop_path_rate: float | None = None, **kwargs):
    """A timm model with its classifier removed (``num_classes=0``) so it returns pooled features."""
    import timm

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
        raise ConfigError(no_weights_message(name, str(e).splitlines()[0])) from None


def no_weights_message(name: str, why: str) -> str:
    return (f"could not load pretrained weights for model '{name}': {why}. Supply weights another way: "
            f"model.checkpoint=/path/to/weights.safetensors (or .pth, or a transferlab run's .ckpt), "
            f"pre-download them into the Hugging Face cache (HF_HOME) on a machine with network, "
            f"or train from scratch with model.pretrained=false.")


def _check_hub_weights(name: str) -> None:
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(name)
    if cfg is None or not cfg.hf_hub_id:
        return  # weights come from a URL or file: timm reports its own error
    require_hub_copy(cfg.hf_hub_id.split("@")[0], ("model.safetensors", "pytorch_model.bin",
                                                   "open_clip_pytorch_model.bin"),
                     lambda why: no_weights_message(name, why))
