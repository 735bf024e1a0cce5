"""Target datasets: one module per kind, chosen by ``data.kind``; ``create_splits`` applies class
subsets and few-shot sampling the same way for every kind."""
from __future__ import annotations

from importlib import import_module

from transferlab.data.base import LabeledImages, few_shot, select_classes
from transferlab.errors import ConfigError, DataError

KINDS = {"digits": "digits", "synthetic": "synthetic", "image_folder": "image_folder", "csv": "csv",
         "torchvision": "torchvision_sets"}


def create_splits(cfg, label_column: str = "label") -> dict[str, LabeledImages]:
    """train/val/test views of one dataset, after ``classes`` (subset) and ``train_per_class`` (few-shot)."""
    if cfg.kind not in KINDS:
        raise ConfigError(f"unknown data.kind '{cfg.kind}'; valid: {', '.join(KINDS)}")
    splits = import_module(f"transferlab.data.{KINDS[cfg.kind]}").create(cfg)
    columns = splits["train"].classes
    if (cfg.get("classes") is not None or cfg.get("train_per_class")) and label_column not in columns:
        raise ConfigError(f"label column '{label_column}' does not exist in data '{cfg.get('name', cfg.kind)}'; "
                          f"its columns: {', '.join(columns)}")
    if cfg.get("classes") is not None:
        splits = {k: select_classes(v, label_column, list(cfg.classes)) for k, v in splits.items()}
    if cfg.get("train_per_class"):
        splits["train"] = few_shot(splits["train"], label_column, cfg.train_per_class, cfg.split_seed)
    for name, ds in splits.items():
        if len(ds) == 0:
            raise DataError(f"the {name} split of data '{cfg.get('name', cfg.kind)}' is empty; "
                            f"check data.root / data.classes / the split fractions")
    return splits
