"""A manifest of image paths and label columns (``path,shape,color[,split]``), relative to ``root``."""
from __future__ import annotations

import csv as _csv
from pathlib import Path

import numpy as np

from transferlab.data.base import SPLITS, split_three_ways
from transferlab.data.image_folder import Files
from transferlab.errors import DataError


def create(cfg):
    manifest = Path(cfg.manifest).expanduser() if cfg.manifest else None
    if manifest is None or not manifest.is_file():
        raise DataError(f"csv manifest '{cfg.manifest}' does not exist; pass data.manifest=/path/to/labels.csv")
    with open(manifest, newline="") as f:
        rows = list(_csv.DictReader(f))
    if not rows:
        raise DataError(f"csv manifest '{manifest}' has no rows")
    columns = list(rows[0])
    if cfg.path_column not in columns:
        raise DataError(f"csv manifest '{manifest}' has no path column '{cfg.path_column}'; columns: {', '.join(columns)}")
    label_columns = list(cfg.label_columns or [c for c in columns if c not in (cfg.path_column, cfg.split_column)])
    missing = [c for c in label_columns if c not in columns]
    if missing:
        raise DataError(f"label column(s) {missing} not in manifest '{manifest}'; columns: {', '.join(columns)}")
    root = Path(cfg.root).expanduser() if cfg.root else manifest.parent
    paths = [str(root / r[cfg.path_column]) for r in rows]
    absent = [p for p in paths if not Path(p).is_file()]
    if absent:
        raise DataError(f"{len(absent)} image(s) listed in '{manifest}' do not exist, e.g. '{absent[0]}'")
    classes = {c: sorted({r[c] for r in rows}) for c in label_columns}
    targets = {c: [classes[c].index(r[c]) for r in rows] for c in label_columns}
    ds = Files(paths, targets, classes)
    if cfg.split_column in columns:
        split = np.array([r[cfg.split_column] for r in rows])
        bad = sorted(set(split) - set(SPLITS))
        if bad:
            raise DataError(f"split column '{cfg.split_column}' has values {bad}; valid: {', '.join(SPLITS)}")
        return {s: ds.subset(np.flatnonzero(split == s)) for s in SPLITS}
    return split_three_ways(ds, label_columns[0], cfg.val_fraction, cfg.test_fraction, cfg.split_seed)
