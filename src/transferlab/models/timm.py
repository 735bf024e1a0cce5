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
from transferlab.settings import FRACTION, optional, setting


class ImageInputs:
    """An image transform whose output is the batch mapping the backbone reads."""

    def __init__(self, transform):
        self.transform = transform

    def __call__(self, image) -> dict:
        return {"pixel_values": self.transform(image)}

    def __repr__(self) -> str:  # part of the feature-cache key
        return repr(self.transform)


@FAMILIES.register("timm")
@dataclass(kw_only=True)
class TimmFamily(Family):
    kind: str = "timm"
    modality = "image"
    pretrained: bool = True  # timm's hub weights
    drop_path_rate: float | None = setting(None, optional(FRACTION), tune=True)  # stochastic depth; null = the model's own
    kwargs: dict = setting(factory=dict)  # any other timm.create_model keyword (e.g. img_size for ViTs)
    channels_last: bool = False  # NHWC memory layout: faster convolutions under mixed precision on GPUs

    def create_backbone(self, input_size: int | None = None):
        import torch

        backbone = create_backbone(self.name, pretrained=self.pretrained, drop_rate=self.drop_rate,
                                   drop_path_rate=self.drop_path_rate, input_size=input_size, **self.kwargs)
        if self.grad_checkpointing:
            if not hasattr(backbone, "set_grad_checkpointing"):
                raise ConfigError(f"model '{self.name}' does not support model.grad_checkpointing=true")
            backbone.set_grad_checkpointing(True)  # recompute activations in backward: less memory, ~30% more compute
        if self.channels_last:
            backbone.to(memory_format=torch.channels_last)  # faster convolutions with mixed precision on tensor cores
        return backbone

    def feature_size(self, backbone) -> int:
        """What ``encode`` returns: ``head_hidden_size`` where a conv head or pre-logits layer follows the
        pooled ``num_features`` (MobileNetV3, GhostNet, EfficientViT …)."""
        return getattr(backbone, "head_hidden_size", None) or backbone.num_features

    def groups(self, backbone, coarse):
        if not hasattr(backbone, "group_matcher"):
            return _feature_stages(backbone)
        from timm.models import group_parameters

        try:
            matcher = backbone.group_matcher(coarse=coarse)
        except (AssertionError, NotImplementedError):  # e.g. RDNet has layers but no coarse stages
            if not coarse:
                return None
            matcher = backbone.group_matcher(coarse=False)  # its layers are its stages, input side first
        groups = group_parameters(backbone, matcher)
        return {name: i for i, names in enumerate(groups.values()) for name in names}

    def encode(self, backbone, inputs):
        import torch

        x = inputs["pixel_values"]
        if self.channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return backbone(x)

    def layers(self, backbone):
        """timm's ``feature_info``: one entry per stage (ResNets, ConvNeXts) or block (ViTs)."""
        return len(getattr(backbone, "feature_info", []) or []) if hasattr(backbone, "forward_intermediates") else 0

    def encode_layer(self, backbone, inputs, layer):
        if not hasattr(backbone, "forward_intermediates"):
            return super().encode_layer(backbone, inputs, layer)
        (out,) = backbone.forward_intermediates(inputs["pixel_values"], indices=[layer - 1], intermediates_only=True)
        return out.mean((2, 3)) if out.ndim == 4 else out.mean(1)  # NCHW maps, or tokens

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
                    drop_path_rate: float | None = None, input_size: int | None = None, **kwargs):
    """A timm model with its classifier removed (``num_classes=0``) so it returns pooled features, for
    images of ``input_size`` pixels (None: the model's own size). Only what the user set is passed on:
    a fifth of timm's families take no ``drop_path_rate``. A model built for one input size (ViT, Swin,
    LeViT …) is built again for the data's size when it cannot read them (timm resamples pretrained
    position embeddings); one that cannot be is refused here, naming both sizes, before any training."""
    import timm

    if not timm.is_model(name.split(".")[0]):
        raise ConfigError(f"unknown model '{name}': not a timm model name; "
                          f"{suggest(name, timm.list_models())} (see timm.list_models())")
    if drop_path_rate is not None:
        kwargs["drop_path_rate"] = drop_path_rate
    if drop_rate:
        kwargs["drop_rate"] = drop_rate
    if pretrained:
        _check_hub_weights(name)
    tries = [kwargs]
    if input_size and "img_size" not in kwargs:  # the user's own img_size is never second-guessed
        resized = {**kwargs, "img_size": input_size}
        tries = [resized, kwargs] if _own_size(name, fixed=True) not in (None, input_size) else [kwargs, resized]
    for keywords in tries:
        backbone = _create(name, pretrained, keywords)
        if backbone is not None and _reads(backbone, input_size):
            return backbone
    own = _own_size(name)
    size = input_size or own
    raise ConfigError(f"model '{name}' cannot read {size}x{size} images"
                      + (f" (it is built for {own}x{own}, and timm cannot build it for {size}x{size})"
                         if own and own != size else "")
                      + f"; set data.input_size={own} (the model's own size), or choose another model")


def _create(name: str, pretrained: bool, kwargs: dict):
    """timm's model, or None when it takes no ``img_size``; another keyword it does not take is the
    user's and is refused by name."""
    import timm

    try:
        return timm.create_model(name, pretrained=pretrained, num_classes=0, **kwargs)
    except TypeError as e:
        unknown = [key for key in kwargs if f"'{key}'" in str(e)]
        if unknown == ["img_size"]:
            return None
        if not unknown:
            raise
        key = next(k for k in unknown if k != "img_size")
        where = {"drop_path_rate": "model.drop_path_rate", "drop_rate": "model.drop_rate"}.get(key, f"model.kwargs.{key}")
        raise ConfigError(f"model '{name}' does not take {where}={kwargs[key]} (timm.create_model has no such "
                          f"keyword for it); leave {where} unset (null) for this model") from None
    except (OSError, RuntimeError) as e:
        if not pretrained:
            raise
        raise ConfigError(no_weights_message(name, str(e).splitlines()[0])) from None


def _reads(backbone, input_size: int | None) -> bool:
    """Whether one image of the data's size goes through: a size error now, not at the first step."""
    import torch
    from timm.data import resolve_model_data_config

    size = input_size or resolve_model_data_config(backbone)["input_size"][-1]
    training = backbone.training
    try:
        with torch.no_grad():
            backbone.eval()  # no BatchNorm statistics move
            backbone(torch.zeros(1, 3, size, size))
        return True
    except (AssertionError, RuntimeError, ValueError):
        return False
    finally:
        backbone.train(training)


def _feature_stages(backbone) -> dict[str, int] | None:
    """Stages from timm's ``feature_info`` for models without a ``group_matcher`` (MetaFormer, PiT …):
    what comes before the first feature module is stage 0, each feature module the next, what comes
    after the last (final norm) the last stage. Used for both freezing and layer decay."""
    modules = [f["module"] for f in getattr(backbone, "feature_info", None) or [] if f.get("module")]
    if not modules:
        return None
    stage_of, current = {}, 0
    for name, _ in backbone.named_parameters():
        under = [i for i, m in enumerate(modules) if name.startswith(m + ".")]
        current = under[0] + 1 if under else current
        stage_of[name] = current
    return stage_of


def _own_size(name: str, fixed: bool = False) -> int | None:
    """The input size a model's pretrained config names (with ``fixed``: only where it is the one size
    the model is built for)."""
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(name)
    if cfg is None or (fixed and not cfg.fixed_input_size):
        return None
    return cfg.input_size[-1]


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
