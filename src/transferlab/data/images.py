"""Image data: the settings every image kind shares and items that are PIL images (``conf/data/_images.yaml``).

An image kind's items may be corrupted (``data.corruption``, ImageNet-C style, ``data/corruptions.py``)
as they are read: deterministically per item, so every run sees the same shifted images.
"""
from __future__ import annotations

from dataclasses import dataclass

from transferlab.data.base import Data, LabeledItems
from transferlab.errors import DataError
from transferlab.settings import NON_NEGATIVE, NON_NEGATIVE_INT, POSITIVE_INT, UNIT, Settings, optional, setting


@dataclass(kw_only=True)
class Augment(Settings):
    """Training augmentation (timm's transform); evaluation never augments."""
    enabled: bool = True
    hflip: float = setting(0.5, UNIT)
    vflip: float = setting(0.0, UNIT)
    rotation: float = setting(0, NON_NEGATIVE)
    scale: tuple[float, ...] = (0.08, 1.0)
    ratio: tuple[float, ...] = (0.75, 1.3333)
    auto_augment: str | None = None
    color_jitter: float = setting(0.4, NON_NEGATIVE)
    re_prob: float = setting(0.0, UNIT)


@dataclass(kw_only=True)
class Corruption(Settings):
    """A distribution shift applied to every split, deterministic per image."""
    kind: str | None = None  # a name in data.corruptions.CORRUPTIONS; null = clean images
    severity: int = setting(3, (lambda v: v in range(1, 6), "an integer from 1 (mild) to 5 (strong)"))
    seed: int = setting(0, NON_NEGATIVE_INT)

    def check(self, where):
        if self.kind is not None:
            from transferlab.data.corruptions import CORRUPTIONS

            CORRUPTIONS.entry(self.kind, f"{where}.kind")


@dataclass(kw_only=True)
class ImageData(Data):
    input_size: int | None = setting(None, optional(POSITIVE_INT))  # pixels fed to the model; null = its own
    augment: Augment = setting(factory=Augment)
    corruption: Corruption = setting(factory=Corruption)
    modality = "image"

    def corruption_spec(self) -> tuple[str, int, int] | None:
        c = self.corruption
        return None if c.kind is None else (str(c.kind), c.severity, c.seed)


class LabeledImages(LabeledItems):
    """Items are ``(PIL image, labels)``; ``corruption``: None (clean images) or ``(name, severity, seed)``
    applied to every item as it is read."""

    what = "image"
    corruption: tuple[str, int, int] | None = None

    def content_key(self) -> str | None:
        """Default: the digest of an in-memory ``images`` array."""
        import numpy as np

        from transferlab.data.base import digest

        images = getattr(self, "images", None)
        return None if images is None else digest(np.ascontiguousarray(images))

    def fingerprint_extra(self) -> list[bytes]:
        if self.corruption is None:  # corrupted images never share features with clean ones
            return []
        return [b"corruption", repr(tuple(self.corruption)).encode()]

    def __getitem__(self, idx: int):
        i = int(self.indices[idx])
        try:
            image = self.load(i)
        except DataError:
            raise
        except Exception as e:  # noqa: BLE001 - any decoder failure means this file is unusable
            raise DataError(f"cannot read image {self.describe(i)}: {type(e).__name__}: {e}. "
                            f"Remove or replace the file.") from None
        if self.corruption is not None:
            from transferlab.data.corruptions import corrupt

            image = corrupt(image, self.corruption, i)  # seeded by the item, not by idx or order
        return image, {k: int(v[i]) for k, v in self.targets.items()}

    def corrupted(self, corruption: tuple[str, int, int] | None) -> "LabeledImages":
        """A view on the same items whose images are corrupted (None = clean)."""
        import numpy as np

        view = self.subset(np.arange(len(self)))
        view.corruption = None if corruption is None else tuple(corruption)
        return view
