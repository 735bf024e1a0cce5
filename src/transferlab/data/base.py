"""What every dataset kind returns: images with one or more integer label columns, split three ways."""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from transferlab.data.corruptions import corrupt
from transferlab.errors import DataError

SPLITS = ("train", "val", "test")


class LabeledImages(Dataset):
    """Items are ``(PIL image, {column: class index})``; ``classes`` names the classes per column.

    Subclasses implement ``load(i)``; ``targets`` holds every label up front so that splits, class
    subsets and few-shot sampling never open an image. ``corruption``: None (clean images) or
    ``(name, severity, seed)`` from ``data/corruptions.py``, applied to every item as it is read.
    """

    corruption: tuple[str, int, int] | None = None

    def __init__(self, targets: dict[str, np.ndarray], classes: dict[str, list[str]], indices=None):
        self.targets = {k: np.asarray(v, dtype=np.int64) for k, v in targets.items()}
        self.classes = classes
        n = len(next(iter(self.targets.values())))
        self.indices = np.arange(n) if indices is None else np.asarray(indices, dtype=np.int64)

    def load(self, i: int) -> Image.Image:
        raise NotImplementedError

    def describe(self, i: int) -> str:
        """How to name item i in an error message (a file path where there is one)."""
        return f"item {i}"

    def content_key(self) -> str | None:
        """What identifies the underlying images, for features shared across runs; None = cannot tell
        cheaply (then nothing is shared). Default: the digest of an in-memory ``images`` array."""
        images = getattr(self, "images", None)
        return None if images is None else digest(np.ascontiguousarray(images))

    def fingerprint(self) -> str | None:
        """The images and labels of this view: content, positions and (renumbered) label columns."""
        content = self.content_key()
        if content is None:
            return None
        parts = [content.encode(), self.indices.tobytes()]
        for column in sorted(self.targets):
            parts += [column.encode(), self.targets[column][self.indices].tobytes()]
        if self.corruption is not None:  # corrupted images never share features with clean ones
            parts += [b"corruption", repr(tuple(self.corruption)).encode()]
        return digest(*parts)

    def __len__(self) -> int:
        return len(self.indices)

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
            image = corrupt(image, self.corruption, i)  # seeded by the item, not by idx or order
        return image, {k: int(v[i]) for k, v in self.targets.items()}

    def subset(self, indices) -> "LabeledImages":
        """A view on some of this dataset's items (positions within this view)."""
        view = object.__new__(type(self))
        view.__dict__.update(self.__dict__)
        view.indices = self.indices[np.asarray(indices, dtype=np.int64)]
        return view

    def corrupted(self, corruption: tuple[str, int, int] | None) -> "LabeledImages":
        """A view on the same items whose images are corrupted (None = clean)."""
        view = self.subset(np.arange(len(self)))
        view.corruption = None if corruption is None else tuple(corruption)
        return view

    def labels(self, column: str) -> np.ndarray:
        if column not in self.targets:
            raise DataError(f"label column '{column}' does not exist; this dataset has: {', '.join(self.targets)}")
        return self.targets[column][self.indices]


def digest(*parts) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part)
    return h.hexdigest()


def stratified_split(labels: np.ndarray, fractions: dict[str, float], seed: int) -> dict[str, np.ndarray]:
    """Positions per split, the same class balance in each, fixed by ``seed``."""
    rng = np.random.default_rng(seed)
    out = {name: [] for name in fractions}
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        start = 0
        for j, (name, frac) in enumerate(fractions.items()):
            stop = len(idx) if j == len(fractions) - 1 else start + int(round(frac * len(idx)))
            out[name].extend(idx[start:stop])
            start = stop
    return {name: np.sort(np.asarray(v, dtype=np.int64)) for name, v in out.items()}


def split_three_ways(ds: LabeledImages, column: str, val_fraction: float, test_fraction: float,
                     seed: int) -> dict[str, LabeledImages]:
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise DataError(f"split fractions val={val_fraction}, test={test_fraction} must be in [0, 1) and sum below 1")
    fractions = {"test": test_fraction, "val": val_fraction, "train": 1 - val_fraction - test_fraction}
    return {k: ds.subset(v) for k, v in stratified_split(ds.labels(column), fractions, seed).items()}


def few_shot(ds: LabeledImages, column: str, per_class: int, seed: int) -> LabeledImages:
    """``per_class`` items of each class, or a clear error when a class has fewer."""
    labels = ds.labels(column)
    rng = np.random.default_rng(seed)
    keep = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        if per_class > len(idx):
            raise DataError(f"train_per_class={per_class} but class '{ds.classes[column][c]}' has only {len(idx)} "
                            f"training images; choose train_per_class <= {min(np.bincount(labels)[np.unique(labels)])}")
        keep.extend(rng.choice(idx, per_class, replace=False))
    return ds.subset(np.sort(keep))


def select_classes(ds: LabeledImages, column: str, classes: list) -> LabeledImages:
    """Keep only some classes of one column and renumber them 0..k-1 in the given order."""
    names = ds.classes[column]
    wanted = [str(c) for c in classes]
    repeated = sorted({c for c in wanted if wanted.count(c) > 1})
    if repeated:  # a repeated class would get a second head output that no image is labelled with
        raise DataError(f"data.classes={classes} lists {', '.join(map(repr, repeated))} more than once; "
                        f"name each class once")
    unknown = [c for c in wanted if c not in names]
    if unknown:
        raise DataError(f"data.classes has {unknown}, not classes of column '{column}'; valid: {', '.join(names)}")
    old = np.array([names.index(c) for c in wanted])
    labels = ds.labels(column)
    view = ds.subset(np.flatnonzero(np.isin(labels, old)))
    remap = np.full(len(names), -1, dtype=np.int64)
    remap[old] = np.arange(len(old))
    view.targets = dict(view.targets, **{column: remap[ds.targets[column]]})
    view.classes = dict(view.classes, **{column: wanted})
    return view


def read_utf8(path, what: str) -> str:
    """A text file's content (a byte-order mark dropped), or a DataError naming the first byte and line
    that are not UTF-8, so a spreadsheet's export fails with its fix instead of a traceback."""
    raw = Path(path).read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise DataError(f"{what} '{path}' is not UTF-8 text (byte 0x{raw[e.start]:02x} on line {line}); "
                        f"save it as UTF-8 (in Excel: 'CSV UTF-8')") from None
