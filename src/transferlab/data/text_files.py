"""Labelled texts from files: csv, tsv, jsonl or parquet; one file split by fractions, or one file per split.

Labels may be strings or numbers: strings are class names as written, a number names its value (1 and
1.0 are class ``1``, as pandas and ``datasets`` read such a column); an empty, null or NaN label is an
error naming its row. ``data.classes``, when given, is the label set of the (single) label column: a
value outside it is an error naming its row.
"""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from dataclasses import dataclass

from transferlab.data import KINDS
from transferlab.data.base import SPLITS, read_utf8, split_three_ways
from transferlab.data.text import LabeledTexts, TextData, check_texts, label_classes, label_name
from transferlab.errors import ConfigError, DataError

FORMATS = ("csv", "tsv", "jsonl", "parquet")


def read_rows(path: Path, fmt: str | None = None) -> tuple[list[dict], list[str]]:
    """Rows as dicts and where each came from (``file:line``), with a clear error for unreadable files."""
    fmt = fmt or {".json": "jsonl", ".ndjson": "jsonl"}.get(path.suffix.lower(), path.suffix.lower().lstrip("."))
    if fmt not in FORMATS:
        raise DataError(f"data file '{path}' has format '{fmt}', which text_files cannot read; valid: "
                        f"{', '.join(FORMATS)} (by extension, or data.format=...)")
    if not path.is_file():
        raise DataError(f"data file '{path}' does not exist")
    if fmt == "parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise DataError(f"reading '{path}' needs pyarrow (pip install pyarrow), or convert it to csv/jsonl") from None
        rows = pq.read_table(path).to_pylist()
        origin = [f"{path}: row {i + 1}" for i in range(len(rows))]
    else:
        text = read_utf8(path, "data file")
        if fmt == "jsonl":
            rows, origin = [], []
            for n, line in enumerate(text.splitlines(), 1):
                if line.strip():
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError as e:
                        raise DataError(f"{path}: line {n} is not JSON ({e.msg})") from None
                    if not isinstance(row, dict):
                        raise DataError(f"{path}: line {n} is not a JSON object")
                    rows.append(row)
                    origin.append(f"{path}: line {n}")
        else:
            reader = csv.DictReader(io.StringIO(text, newline=""), delimiter="\t" if fmt == "tsv" else ",")
            rows, origin = [], []
            for row in reader:
                rows.append(row)
                origin.append(f"{path}: line {reader.line_num}")
    if not rows:
        raise DataError(f"data file '{path}' is empty: it holds no rows")
    return rows, origin


def labeled_texts(rows: list[dict], origin: list[str], cfg, source: str,
                  class_names: dict[str, list[str]] | None = None) -> LabeledTexts:
    """Rows (dicts) and where each came from -> texts and integer labels: what every text kind reading
    tables shares. ``source`` names the table in errors; ``class_names`` gives a column's classes in
    its own order (a ClassLabel's names) instead of the declared or sorted ones."""
    columns = list(dict.fromkeys(k for r in rows[:100] for k in r))
    used = [cfg.text_column] + ([cfg.text_pair_column] if cfg.get("text_pair_column") else [])
    for key, col in zip(("text_column", "text_pair_column"), used):
        if col not in columns:
            raise DataError(f"data.{key}='{col}' is not a column of '{source}'; its columns: {', '.join(columns)}")
    labels = list(cfg.label_columns or [c for c in columns if c not in used])
    missing = [c for c in labels if c not in columns]
    if missing or not labels:
        raise DataError(f"label column(s) {missing or '(none)'} not in '{source}'; its columns: {', '.join(columns)} "
                        f"(data.label_columns=[...])")
    texts = [r.get(cfg.text_column) for r in rows]
    check_texts(texts, origin, cfg.text_column)
    pairs = None
    if cfg.get("text_pair_column"):
        pairs = [r.get(cfg.text_pair_column) for r in rows]
        check_texts(pairs, origin, cfg.text_pair_column)
    values = {c: [label_name(r.get(c), where, c) for r, where in zip(rows, origin)] for c in labels}
    declared = cfg.get("classes") if len(labels) == 1 else None
    classes = {c: (class_names or {}).get(c) or label_classes(v, declared) for c, v in values.items()}
    targets = {}
    for c, v in values.items():
        index = {name: i for i, name in enumerate(classes[c])}
        bad = next((i for i, x in enumerate(v) if x not in index), None)
        if bad is not None:
            raise DataError(f"{origin[bad]}: label '{v[bad]}' in column '{c}' is not one of data.classes "
                            f"({', '.join(classes[c])}); fix the row or add the class")
        targets[c] = [index[x] for x in v]
    return LabeledTexts(texts, targets, classes, pairs, origin)


def three_splits(given: dict[str, LabeledTexts], cfg, what: str = "split files") -> dict[str, LabeledTexts]:
    """train (required), val and test; the ones not given are carved from train (stratified by its
    first label column, by ``val_fraction``/``test_fraction``, fixed by ``split_seed``)."""
    names = {s: ds.classes for s, ds in given.items()}
    if len({json.dumps(c, sort_keys=True) for c in names.values()}) > 1:
        raise DataError(f"the {what} have different classes: {names}; set data.classes=[...] to fix one "
                        f"label set")
    missing = [s for s in ("val", "test") if s not in given]
    if not missing:
        return dict(given)
    column = next(iter(given["train"].classes))
    fractions = {"val": cfg.val_fraction if "val" in missing else 0,
                 "test": cfg.test_fraction if "test" in missing else 0}
    carved = split_three_ways(given["train"], column, fractions["val"], fractions["test"], cfg.split_seed)
    return {s: carved[s] if s in ("train", *missing) else given[s] for s in SPLITS}


def _load(path: Path, cfg) -> LabeledTexts:
    return labeled_texts(*read_rows(path, cfg.get("format")), cfg, str(path))


@KINDS.register("text_files")
@dataclass(kw_only=True)
class TextFilesData(TextData):
    kind: str = "text_files"
    path: str | None = None  # one file, split into train/val/test by the fractions
    train: str | None = None  # or one file per split: train (required), val and test
    val: str | None = None
    test: str | None = None
    format: str | None = None  # csv | tsv | jsonl | parquet; null = from the file extension
    text_column: str = "text"
    text_pair_column: str | None = None
    label_columns: list[str] | None = None  # null = every column but the text ones

    def create(self):
        if self.path:
            given = {"train": _load(Path(str(self.path)).expanduser(), self)}
        elif self.train:
            given = {s: _load(Path(str(getattr(self, s))).expanduser(), self) for s in SPLITS if getattr(self, s)}
        else:
            raise ConfigError("data=text_files needs data.path=/path/to/file (split by fractions) or "
                              "data.train=... [data.val=... data.test=...] (one file per split)")
        return three_splits(given, self)
