"""scikit-learn's bundled handwritten digits: real data, no download, 8x8 grey images of 0-9."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from transferlab.data import KINDS
from transferlab.data.base import split_three_ways
from transferlab.data.images import ImageData, LabeledImages


class Digits(LabeledImages):
    def __init__(self):
        from sklearn.datasets import load_digits

        d = load_digits()
        self.images = (d.images * (255.0 / 16.0)).round().astype(np.uint8)
        super().__init__({"label": d.target}, {"label": [str(c) for c in range(10)]})

    def load(self, i: int):
        from PIL import Image

        return Image.fromarray(self.images[i], mode="L").convert("RGB")


@KINDS.register("digits")
@dataclass(kw_only=True)
class DigitsData(ImageData):
    kind: str = "digits"

    def create(self):
        return split_three_ways(Digits(), "label", self.val_fraction, self.test_fraction, self.split_seed)
