"""Image corruptions for evaluation under distribution shift (ImageNet-C style), ``data.corruption``.

A model is evaluated on shifted copies of its data: the same images, corrupted by one of these at a
severity 1 (mild) .. 5 (strong). Each corruption is ``(RGB image, severity, rng) -> RGB image`` of
the same size, with one small table of strengths per corruption, like ImageNet-C's. The rng is
seeded per item (``images.LabeledImages.__getitem__``), so the shifted images are fixed: every run, every
model, every worker and every epoch sees the same corrupted version of each image, and scores on a
shifted set compare like scores on a clean one.
"""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageFilter

from transferlab.registry import Registry

CORRUPTIONS = Registry("data.corruption", "corruption", modules=("transferlab.data.corruptions",))
SEVERITIES = range(1, 6)


def _array(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0


def _image(x: np.ndarray) -> Image.Image:
    return Image.fromarray((np.clip(x, 0, 1) * 255).round().astype(np.uint8), mode="RGB")


@CORRUPTIONS.register("gaussian_noise")
def gaussian_noise(image: Image.Image, severity: int, rng: np.random.Generator) -> Image.Image:
    """Additive per-pixel noise; standard deviation in [0, 1] intensity units (ImageNet-C's table)."""
    sigma = (0.08, 0.12, 0.18, 0.26, 0.38)[severity - 1]
    x = _array(image)
    return _image(x + rng.normal(0.0, sigma, x.shape))


@CORRUPTIONS.register("contrast")
def contrast(image: Image.Image, severity: int, rng: np.random.Generator) -> Image.Image:
    """Every pixel pulled toward the image's mean; the factor is the contrast that remains."""
    keep = (0.4, 0.3, 0.2, 0.1, 0.05)[severity - 1]
    x = _array(image)
    mean = x.mean()
    return _image((x - mean) * keep + mean)


@CORRUPTIONS.register("invert")
def invert(image: Image.Image, severity: int, rng: np.random.Generator) -> Image.Image:
    """A blend with the inverted image; the weight of the inverted one (1 = fully inverted)."""
    weight = (0.2, 0.4, 0.6, 0.8, 1.0)[severity - 1]
    x = _array(image)
    return _image((1 - weight) * x + weight * (1 - x))


@CORRUPTIONS.register("blur")
def blur(image: Image.Image, severity: int, rng: np.random.Generator) -> Image.Image:
    """Gaussian blur: CIFAR-10-C's sigmas at 32 px, scaled with the shorter side above 32 px (a blur
    of less than a pixel would leave small images such as the 8 px digits unchanged)."""
    sigma = (0.4, 0.6, 0.7, 0.8, 1.0)[severity - 1] * max(min(image.size), 32) / 32
    return image.convert("RGB").filter(ImageFilter.GaussianBlur(radius=sigma))


@CORRUPTIONS.register("pixelate")
def pixelate(image: Image.Image, severity: int, rng: np.random.Generator) -> Image.Image:
    """Down-sampled (box filter) by the factor and scaled back up with nearest neighbours."""
    factor = (0.6, 0.5, 0.4, 0.3, 0.25)[severity - 1]
    w, h = image.size
    small = image.convert("RGB").resize((max(1, round(w * factor)), max(1, round(h * factor))), Image.BOX)
    return small.resize((w, h), Image.NEAREST)


def corrupt(image: Image.Image, corruption: tuple[str, int, int], item: int) -> Image.Image:
    """Item ``item``'s corrupted image: the rng depends only on ``(seed, item)``, never on order,
    worker or process, so the same item always gets the same corruption."""
    name, severity, seed = corruption
    return CORRUPTIONS.entry(name).cls(image.convert("RGB"), severity, np.random.default_rng([seed, item]))
