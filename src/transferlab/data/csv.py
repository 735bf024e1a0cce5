"""A manifest of image paths and label columns (``path,shape,color[,split]``), relative to ``root``.

Read as UTF-8 (a byte-order mark, as Excel writes, is dropped). A manifest that would train on
something other than what it says is refused: empty cells, rows with more cells than the header,
and one image listed twice with different labels or splits; a row repeated exactly is used once,
with a warning.
"""
from __future__ import annotations

import csv as _csv
import io
import logging
import os
from pathlib import Path

from dataclasses import dataclass

import numpy as np

from transferlab.data import KINDS
from transferlab.data.base import SPLITS, read_utf8, split_three_ways
from transferlab.data.image_folder import Files
from transferlab.data.images import ImageData
from transferlab.errors import DataError

log = logging.getLogger(__name__)


def read_rows(manifest: Path) -> tuple[list[str], list[tuple[int, dict]]]:
    """The header and ``(line number, row)`` of every row."""
    text = read_utf8(manifest, "csv manifest")
    try:
        reader = _csv.DictReader(io.StringIO(text, newline=""))
        rows = [(reader.line_num, row) for row in reader]
    except _csv.Error as e:
        raise DataError(f"csv manifest '{manifest}' cannot be parsed: {e}") from None
    return list(reader.fieldnames or []), rows


def check_cells(manifest: Path, rows: list[tuple[int, dict]], columns: list[str]) -> None:
    """Every row has one value per header column and none of ``columns`` is empty."""
    long = [line for line, r in rows if None in r]
    if long:
        raise DataError(f"csv manifest '{manifest}' has more cells than header columns on line(s) "
                        f"{_some(long)}; quote values that contain commas")
    empty = [f"line {line} column '{c}'" for line, r in rows for c in columns if not (r.get(c) or "").strip()]
    if empty:
        raise DataError(f"csv manifest '{manifest}' has {len(empty)} empty cell(s): {_some(empty)}; "
                        f"fill them or remove those rows")


def unique_rows(manifest: Path, rows: list[tuple[int, dict]], root: Path, path_column: str, columns: list[str]):
    """Each image once: an exact repeat is dropped (with a warning), a conflicting one is refused,
    since one image cannot have two labels and must not sit in two splits."""
    first, keep, repeats = {}, [], []
    for line, r in rows:
        path = os.path.normpath(root / r[path_column])
        values = tuple(r[c] for c in columns)
        if path not in first:
            first[path] = (line, values)
            keep.append(r)
        elif first[path][1] == values:
            repeats.append(line)
        else:
            raise DataError(f"csv manifest '{manifest}' lists image '{path}' on lines {first[path][0]} and {line} "
                            f"with different {', '.join(columns)}; keep one row per image")
    if repeats:
        log.warning("csv manifest '%s' repeats %d row(s) exactly (line(s) %s); each image is used once",
                    manifest, len(repeats), _some(repeats))
    return keep


def _some(items: list, n: int = 5) -> str:
    return ", ".join(map(str, items[:n])) + (f" and {len(items) - n} more" if len(items) > n else "")


@KINDS.register("csv")
@dataclass(kw_only=True)
class CsvData(ImageData):
    kind: str = "csv"
    manifest: str | None = None  # the manifest file
    root: str | None = None  # base of relative paths; null = the manifest's folder
    path_column: str = "path"
    label_columns: list[str] | None = None  # null = every column but path and split
    split_column: str = "split"  # optional column with train/val/test; absent = split by fractions

    def create(self):
        return _create(self)


def _create(cfg):
    manifest = Path(cfg.manifest).expanduser() if cfg.manifest else None
    if manifest is None or not manifest.is_file():
        raise DataError(f"csv manifest '{cfg.manifest}' does not exist; pass data.manifest=/path/to/labels.csv")
    columns, rows = read_rows(manifest)
    if not rows:
        raise DataError(f"csv manifest '{manifest}' has no rows")
    if cfg.path_column not in columns:
        raise DataError(f"csv manifest '{manifest}' has no path column '{cfg.path_column}'; columns: {', '.join(columns)}")
    label_columns = list(cfg.label_columns or [c for c in columns if c not in (cfg.path_column, cfg.split_column)])
    missing = [c for c in label_columns if c not in columns]
    if missing:
        raise DataError(f"label column(s) {missing} not in manifest '{manifest}'; columns: {', '.join(columns)}")
    split_columns = [cfg.split_column] if cfg.split_column in columns else []
    check_cells(manifest, rows, [cfg.path_column, *label_columns, *split_columns])
    root = Path(cfg.root).expanduser() if cfg.root else manifest.parent
    rows = unique_rows(manifest, rows, root, cfg.path_column, label_columns + split_columns)
    paths = [str(root / r[cfg.path_column]) for r in rows]
    absent = [p for p in paths if not Path(p).is_file()]
    if absent:
        raise DataError(f"{len(absent)} image(s) listed in '{manifest}' do not exist, e.g. '{absent[0]}'")
    classes = {c: sorted({r[c] for r in rows}) for c in label_columns}
    index = {c: {name: i for i, name in enumerate(names)} for c, names in classes.items()}
    targets = {c: [index[c][r[c]] for r in rows] for c in label_columns}
    ds = Files(paths, targets, classes)
    if split_columns:
        split = np.array([r[cfg.split_column] for r in rows])
        bad = sorted(set(split) - set(SPLITS))
        if bad:
            raise DataError(f"split column '{cfg.split_column}' has values {bad}; valid: {', '.join(SPLITS)}")
        return {s: ds.subset(np.flatnonzero(split == s)) for s in SPLITS}
    return split_three_ways(ds, label_columns[0], cfg.val_fraction, cfg.test_fraction, cfg.split_seed)
