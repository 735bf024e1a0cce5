"""What every data kind shares: its settings, labelled items split three ways, and the split helpers.

A kind (``data/digits.py``, ``data/text_files.py``, ...) is a ``Data`` settings class registered in
``data.KINDS`` whose ``create()`` returns ``{split: LabeledItems}``. Items are ``(raw, {column: class
index})``; ``classes`` names the classes per column and ``targets`` holds every label up front, so
splits, class subsets and few-shot sampling never open an item. What a raw item is (an image, a
text) is the modality's (``data/images.py``, ``data/text.py``); the model family's input adapter
turns it into tensors. No torch here: the settings are checked while the plan resolves.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from transferlab.errors import DataError
from transferlab.settings import FRACTION, NON_NEGATIVE_INT, POSITIVE_INT, Settings, optional, setting

SPLITS = ("train", "val", "test")


@dataclass(kw_only=True)
class Data(Settings):
    """The keys of every data kind (``conf/data/_images.yaml``, ``_text.yaml``)."""
    kind: str
    label: str  # names the data in run names, W&B tags and reports
    classes: list | None = setting(None, (lambda v: v is None or len({str(c) for c in v}) == len(v) > 0,
                                          "null or a non-empty list of distinct classes"))
    train_per_class: int | None = setting(None, optional(POSITIVE_INT))
    val_fraction: float = setting(0.1, FRACTION)
    test_fraction: float = setting(0.1, FRACTION)
    split_seed: int = 0
    batch_size: int = setting(32, POSITIVE_INT)
    num_workers: int = setting(0, NON_NEGATIVE_INT)
    pin_memory: bool | None = None
    modality: ClassVar[str | None] = None  # what its items are, declared by each modality's base: "image", "text"

    def create(self) -> dict[str, "LabeledItems"]:
        """train/val/test views of the dataset, before class subsets and few-shot sampling."""
        raise NotImplementedError

    def corruption_spec(self) -> tuple[str, int, int] | None:
        """``(name, severity, seed)`` of a shift applied to every item, or None."""
        return None


class LabeledItems:
    """Items ``(raw, {column: class index})`` of one dataset view; subclasses implement ``load(i)``."""

    what = "item"  # how errors name an item

    def __init__(self, targets: dict[str, np.ndarray], classes: dict[str, list[str]], indices=None):
        self.targets = {k: np.asarray(v, dtype=np.int64) for k, v in targets.items()}
        self.classes = classes
        n = len(next(iter(self.targets.values())))
        self.indices = np.arange(n) if indices is None else np.asarray(indices, dtype=np.int64)

    def load(self, i: int):
        raise NotImplementedError

    def describe(self, i: int) -> str:
        """How to name item i in an error message (a file path where there is one)."""
        return f"{self.what} {i}"

    def content_key(self) -> str | None:
        """What identifies the underlying items, for features shared across runs; None = cannot tell
        cheaply (then nothing is shared)."""
        return None

    def fingerprint(self) -> str | None:
        """The items and labels of this view: content, positions and (renumbered) label columns."""
        content = self.content_key()
        if content is None:
            return None
        parts = [content.encode(), self.indices.tobytes()]
        for column in sorted(self.targets):
            parts += [column.encode(), self.targets[column][self.indices].tobytes()]
        return digest(*parts, *self.fingerprint_extra())

    def fingerprint_extra(self) -> list[bytes]:
        return []

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, idx: int):
        i = int(self.indices[idx])
        return self.load(i), {k: int(v[i]) for k, v in self.targets.items()}

    def subset(self, indices) -> "LabeledItems":
        """A view on some of this dataset's items (positions within this view)."""
        view = object.__new__(type(self))
        view.__dict__.update(self.__dict__)
        view.indices = self.indices[np.asarray(indices, dtype=np.int64)]
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


def split_three_ways(ds: LabeledItems, column: str, val_fraction: float, test_fraction: float,
                     seed: int) -> dict[str, LabeledItems]:
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise DataError(f"split fractions val={val_fraction}, test={test_fraction} must be in [0, 1) and sum below 1")
    fractions = {"test": test_fraction, "val": val_fraction, "train": 1 - val_fraction - test_fraction}
    return {k: ds.subset(v) for k, v in stratified_split(ds.labels(column), fractions, seed).items()}


def few_shot(ds: LabeledItems, column: str, per_class: int, seed: int) -> LabeledItems:
    """``per_class`` items of each class, or a clear error when a class has fewer."""
    labels = ds.labels(column)
    rng = np.random.default_rng(seed)
    keep = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        if per_class > len(idx):
            raise DataError(f"train_per_class={per_class} but class '{ds.classes[column][c]}' has only {len(idx)} "
                            f"training {ds.what}s; choose train_per_class <= "
                            f"{min(np.bincount(labels)[np.unique(labels)])}")
        keep.extend(rng.choice(idx, per_class, replace=False))
    return ds.subset(np.sort(keep))


def select_classes(ds: LabeledItems, column: str, classes: list) -> LabeledItems:
    """Keep only some classes of one column and renumber them 0..k-1 in the given order."""
    names = ds.classes[column]
    wanted = [str(c) for c in classes]
    repeated = sorted({c for c in wanted if wanted.count(c) > 1})
    if repeated:  # a repeated class would get a second head output that no item is labelled with
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


class Unlabelled:
    """Raw items without labels (what a trained model predicts on): ``(raw, {})``, named by ``ids``."""

    def __init__(self, ids: list[str], load):
        self.ids, self.load = list(ids), load

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int):
        return self.load(self.ids[i]), {}
