"""Generated shapes with several label columns and a controllable shift between two domains.

Labels: ``shape`` (circle, square, triangle, cross), ``color`` (red, green, blue) and ``size``
(small, large). The ``target`` domain moves the background, noise and palette away from ``source``
by ``shift`` in [0, 1], so the same generator gives a source task and a shifted target task.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from PIL import Image

from transferlab.data import KINDS
from transferlab.data.base import split_three_ways
from transferlab.data.images import ImageData, LabeledImages
from transferlab.errors import DataError
from transferlab.settings import POSITIVE_INT, UNIT, setting

SHAPES = ["circle", "square", "triangle", "cross"]
COLORS = ["red", "green", "blue"]
SIZES = ["small", "large"]
_PALETTE = np.array([[220, 40, 40], [40, 200, 60], [50, 80, 230]], dtype=np.float32)


def _mask(shape: int, size: float, cx: float, cy: float, res: int) -> np.ndarray:
    y, x = np.mgrid[0:res, 0:res].astype(np.float32) / res
    dx, dy = x - cx, y - cy
    if shape == 0:
        return dx ** 2 + dy ** 2 <= size ** 2
    if shape == 1:
        return (np.abs(dx) <= size * 0.85) & (np.abs(dy) <= size * 0.85)
    if shape == 2:
        return (dy <= size * 0.8) & (dy >= -size) & (np.abs(dx) <= (dy + size) * 0.6)
    return ((np.abs(dx) <= size * 0.3) | (np.abs(dy) <= size * 0.3)) & (np.abs(dx) <= size) & (np.abs(dy) <= size)


class Synthetic(LabeledImages):
    def __init__(self, num_samples: int, resolution: int, domain: str, shift: float, seed: int):
        if domain not in ("source", "target"):
            raise DataError(f"data.domain='{domain}' is not a domain; valid: source, target")
        rng = np.random.default_rng(seed + (0 if domain == "source" else 1_000_003))
        n = num_samples
        shapes, colors, sizes = rng.integers(0, 4, n), rng.integers(0, 3, n), rng.integers(0, 2, n)
        s = shift if domain == "target" else 0.0
        images = np.empty((n, resolution, resolution, 3), dtype=np.uint8)
        for i in range(n):
            size = (0.18 if sizes[i] == 0 else 0.32) * rng.uniform(0.9, 1.1)
            cx, cy = rng.uniform(0.35, 0.65, 2)
            background = np.array([30, 30, 30], np.float32) + s * np.array([150, 120, 60], np.float32)
            img = np.broadcast_to(background, (resolution, resolution, 3)).copy()
            color = _PALETTE[colors[i]] * (1 - 0.35 * s) + 0.35 * s * rng.uniform(80, 200, 3)
            img[_mask(shapes[i], size, cx, cy, resolution)] = color
            img += rng.normal(0, 8 + 40 * s, img.shape)
            images[i] = np.clip(img, 0, 255).astype(np.uint8)
        self.images = images
        super().__init__({"shape": shapes, "color": colors, "size": sizes},
                         {"shape": SHAPES, "color": COLORS, "size": SIZES})

    def load(self, i: int) -> Image.Image:
        return Image.fromarray(self.images[i])


@KINDS.register("synthetic")
@dataclass(kw_only=True)
class SyntheticData(ImageData):
    kind: str = "synthetic"
    domain: Literal["source", "target"] = "target"
    shift: float = setting(0.5, UNIT)  # 0 = target looks like source; 1 = strongest shift
    num_samples: int = setting(1200, POSITIVE_INT)
    resolution: int = setting(32, POSITIVE_INT)
    seed: int = 0
    stratify_by: str = "shape"

    def create(self):
        ds = Synthetic(self.num_samples, self.resolution, self.domain, self.shift, self.seed)
        return split_three_ways(ds, self.stratify_by, self.val_fraction, self.test_fraction, self.split_seed)
