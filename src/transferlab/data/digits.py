"""scikit-learn's bundled handwritten digits: real data, no download, 8x8 grey images of 0-9."""
from __future__ import annotations

import numpy as np
from PIL import Image

from transferlab.data.base import LabeledImages, split_three_ways


class Digits(LabeledImages):
    def __init__(self):
        from sklearn.datasets import load_digits

        d = load_digits()
        self.images = (d.images * (255.0 / 16.0)).round().astype(np.uint8)
        super().__init__({"label": d.target}, {"label": [str(c) for c in range(10)]})

    def load(self, i: int) -> Image.Image:
        return Image.fromarray(self.images[i], mode="L").convert("RGB")


def create(cfg) -> dict[str, LabeledImages]:
    return split_three_ways(Digits(), "label", cfg.val_fraction, cfg.test_fraction, cfg.split_seed)
