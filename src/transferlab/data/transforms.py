"""Preprocessing that follows the source model's pretrained config, plus configurable augmentation."""
from __future__ import annotations

from timm.data import create_transform as timm_create_transform
from torchvision import transforms as T


def create_transform(model_data_config: dict, aug, train: bool, input_size: int | None = None):
    """timm's train/eval transform (resize, crop, flip, RandAugment, normalize) with the model's mean/std.

    ``input_size`` overrides the model's (e.g. 32 px for 8x8 digits); evaluation never augments.
    ``aug.rotation`` adds a random rotation, which timm's transform lacks.
    """
    size = input_size or model_data_config["input_size"][-1]
    common = dict(input_size=size, mean=model_data_config["mean"], std=model_data_config["std"],
                  interpolation=model_data_config.get("interpolation", "bilinear"))
    if not (train and aug.enabled):
        return timm_create_transform(is_training=False, crop_pct=1.0 if input_size else
                                     model_data_config.get("crop_pct", 0.875), **common)
    tf = timm_create_transform(is_training=True, hflip=aug.hflip, vflip=aug.get("vflip", 0.0),
                               scale=tuple(aug.scale), ratio=tuple(aug.ratio), auto_augment=aug.auto_augment,
                               color_jitter=aug.color_jitter, re_prob=aug.get("re_prob", 0.0), **common)
    if aug.rotation:
        tf.transforms.insert(0, T.RandomRotation(aug.rotation))
    return tf
