"""Target datasets: one module per kind, registered under its ``data.kind``; ``create_splits``
applies class subsets, few-shot sampling and corruptions the same way for every kind."""
from __future__ import annotations

from collections.abc import Mapping

from transferlab.data import csv, digits, image_folder, synthetic, torchvision_sets  # noqa: F401 - register kinds
from transferlab.data import synthetic_text, text_files  # noqa: F401 - register the text kinds
from transferlab.data.base import KINDS, LabeledImages, few_shot, select_classes
from transferlab.data.corruptions import corruption_from_config
from transferlab.errors import ConfigError, DataError

__all__ = ["KINDS", "batch_size", "create_splits"]


def create_splits(cfg, label_column: str = "label") -> dict[str, LabeledImages]:
    """train/val/test views of one dataset, after ``classes`` (subset) and ``train_per_class`` (few-shot),
    every split corrupted when ``corruption.name`` is set (evaluation under distribution shift)."""
    corruption = corruption_from_config(cfg.get("corruption"))  # checked before any data is loaded
    splits = KINDS.create(cfg.kind, cfg)
    columns = splits["train"].classes
    if (cfg.get("classes") is not None or cfg.get("train_per_class")) and label_column not in columns:
        raise ConfigError(f"label column '{label_column}' does not exist in data '{cfg.get('name', cfg.kind)}'; "
                          f"its columns: {', '.join(columns)}")
    if cfg.get("classes") is not None:
        splits = {k: select_classes(v, label_column, list(cfg.classes)) for k, v in splits.items()}
    if cfg.get("train_per_class"):
        splits["train"] = few_shot(splits["train"], label_column, cfg.train_per_class, cfg.split_seed)
    if corruption is not None:
        splits = {k: v.corrupted(corruption) for k, v in splits.items()}
    for name, ds in splits.items():
        if len(ds) == 0:
            raise DataError(f"the {name} split of data '{cfg.get('name', cfg.kind)}' is empty; "
                            f"check data.root / data.classes / the split fractions")
    return splits


def batch_size(inputs: Mapping) -> int:
    """Items in a batch of inputs (a mapping of tensors with the batch first, whatever the modality)."""
    return next(iter(inputs.values())).shape[0]
