"""Datasets (the ``data`` group): one module per kind, registered under its ``data.kind``;
``create_splits`` applies class subsets, few-shot sampling and corruptions the same way for every kind."""
from __future__ import annotations

from collections.abc import Mapping

from transferlab.errors import ConfigError, DataError
from transferlab.registry import Registry

KINDS = Registry("data", "data kind", package="transferlab.data",
                 support=("base", "images", "text", "datamodule", "features", "transforms", "corruptions"))

__all__ = ["KINDS", "batch_size", "create_kind", "create_splits"]


def create_kind(data) -> dict:
    """The raw splits of a data config node (or its settings), before classes, few-shot and corruption."""
    settings = data if hasattr(data, "create") else KINDS.parse(data, "data")
    return settings.create()


def create_splits(data, label_column: str | None = "label") -> dict:
    """train/val/test views of one dataset (``data``: its settings), after ``classes`` (subset) and
    ``train_per_class`` (few-shot) on ``label_column``, every split corrupted when a corruption is set
    (evaluation under distribution shift). ``data`` may also be a ``data`` config node."""
    if not hasattr(data, "create"):
        data = KINDS.parse(data, "data")
    splits = data.create()
    columns = splits["train"].classes
    if (data.classes is not None or data.train_per_class) and label_column not in columns:
        raise ConfigError(f"label column '{label_column}' does not exist in data '{data.label}'; "
                          f"its columns: {', '.join(columns)}")
    if data.classes is not None:
        from transferlab.data.base import select_classes

        splits = {k: select_classes(v, label_column, list(data.classes)) for k, v in splits.items()}
    if data.train_per_class:
        from transferlab.data.base import few_shot

        splits["train"] = few_shot(splits["train"], label_column, data.train_per_class, data.split_seed)
    corruption = data.corruption_spec()
    if corruption is not None:
        splits = {k: v.corrupted(corruption) for k, v in splits.items()}
    for name, ds in splits.items():
        if len(ds) == 0:
            raise DataError(f"the {name} split of data '{data.label}' is empty; "
                            f"check data.root / data.classes / the split fractions")
    return splits


def batch_size(inputs: Mapping) -> int:
    """Items in a batch of inputs (a mapping of tensors with the batch first, whatever the modality)."""
    return next(iter(inputs.values())).shape[0]
