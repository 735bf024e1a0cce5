"""torchvision's standard transfer targets (CIFAR, Flowers102, Pets, DTD, EuroSAT, Food101).

Nothing is downloaded unless ``data.download=true``; a missing set or a failed download says so.
"""
from __future__ import annotations

from pathlib import Path

from dataclasses import dataclass

import numpy as np

from transferlab.data import KINDS
from transferlab.data.base import split_three_ways
from transferlab.data.images import ImageData, LabeledImages
from transferlab.errors import DataError

# name -> (torchvision class, constructor kwargs per split it ships; splits it lacks are carved from train)
SETS = {
    "cifar10": ("CIFAR10", {"train": {"train": True}, "test": {"train": False}}),
    "cifar100": ("CIFAR100", {"train": {"train": True}, "test": {"train": False}}),
    "flowers102": ("Flowers102", {"train": {"split": "train"}, "val": {"split": "val"}, "test": {"split": "test"}}),
    "oxford_pets": ("OxfordIIITPet", {"train": {"split": "trainval"}, "test": {"split": "test"}}),
    "dtd": ("DTD", {"train": {"split": "train"}, "val": {"split": "val"}, "test": {"split": "test"}}),
    "eurosat": ("EuroSAT", {"train": {}}),
    "food101": ("Food101", {"train": {"split": "train"}, "test": {"split": "test"}}),
}


class TorchvisionSet(LabeledImages):
    def __init__(self, dataset):
        self.dataset = dataset
        targets = _targets(dataset)
        classes = [str(c) for c in getattr(dataset, "classes", sorted(set(targets)))]
        super().__init__({"label": targets}, {"label": classes})

    def load(self, i: int):
        return self.dataset[i][0].convert("RGB")

    def content_key(self) -> str | None:
        return repr(self.dataset)  # class, root, split and size of a fixed published set


def _targets(ds) -> np.ndarray:
    for attr in ("targets", "_labels"):
        if hasattr(ds, attr):
            return np.asarray(getattr(ds, attr))
    return np.asarray([y for _, y in ds.samples]) if hasattr(ds, "samples") else np.asarray([y for _, y in ds])


@KINDS.register("torchvision")
@dataclass(kw_only=True)
class TorchvisionData(ImageData):
    kind: str = "torchvision"
    dataset: str  # which set: one of SETS
    root: str  # where the files are (or go with download=true)
    download: bool = False  # true fetches the set (needs network)

    def check(self, where):
        if self.dataset not in SETS:
            from transferlab.errors import ConfigError

            raise ConfigError(f"{where}.dataset={self.dataset!r} is not a torchvision set transferlab knows; "
                              f"valid: {', '.join(SETS)}")

    def create(self):
        return _create(self)


def _create(cfg) -> dict[str, LabeledImages]:
    import torchvision.datasets as tvd

    if cfg.dataset not in SETS:
        raise DataError(f"unknown torchvision set '{cfg.dataset}'; valid: {', '.join(SETS)}")
    cls_name, splits = SETS[cfg.dataset]
    root = Path(cfg.root).expanduser()
    built = {}
    for split, kwargs in splits.items():
        try:
            built[split] = TorchvisionSet(getattr(tvd, cls_name)(str(root), download=cfg.download, **kwargs))
        except RuntimeError as e:  # torchvision's "Dataset not found or corrupted"
            hint = ("pass data.download=true to fetch it (needs network)" if not cfg.download
                    else "the download failed; fetch it on a machine with network and copy it there")
            raise DataError(f"{cfg.dataset} not found under data.root='{root}' ({e}); {hint}") from None
        except OSError as e:  # URLError and friends while downloading
            raise DataError(f"downloading {cfg.dataset} into '{root}' failed ({e}); this machine may be offline: "
                            f"fetch it elsewhere and copy it to data.root") from None
    carved = split_three_ways(built["train"], "label", 0 if "val" in built else cfg.val_fraction,
                              0 if "test" in built else cfg.test_fraction, cfg.split_seed)
    return {name: built.get(name, carved[name]) if name != "train" else carved["train"] for name in carved}
