"""Labelled texts from Hugging Face ``datasets``: a hub name (``imdb``, ``glue`` with ``data.subset=sst2``),
a ``save_to_disk`` directory, or a builder (``csv``, ``json``, ``parquet``) over ``data.data_files``.

Only the loading is this adapter's: rows become texts and labels, and missing splits are carved from
train, by text_files' code. A ClassLabel column keeps its names in the dataset's order. Offline, or
with the hub unreachable, a hub name outside the local datasets cache fails in seconds (the client
alone retries for half a minute) and says how to supply the data instead.
"""
from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from transferlab.data import KINDS
from transferlab.data.base import SPLITS
from transferlab.data.text import LabeledTexts, TextData
from transferlab.data.text_files import labeled_texts, three_splits
from transferlab.errors import ConfigError, DataError
from transferlab.hub import unreachable

log = logging.getLogger(__name__)


@KINDS.register("hf_datasets")
@dataclass(kw_only=True)
class HfDatasetsData(TextData):
    kind: str = "hf_datasets"
    path: str | None = None  # hub name, a save_to_disk directory, or a builder (csv, json, parquet)
    subset: str | None = None  # the hub dataset's configuration (glue: sst2, ...)
    data_files: object = None  # a builder's files: one path, a list, or {train: ..., validation: ...}
    splits: dict = None  # our split -> the dataset's split name; one it lacks is carved from train
    text_column: str = "text"
    text_pair_column: str | None = None
    label_columns: list[str] | None = None  # null = the ClassLabel columns, else every non-text column

    def create(self):
        return _create(self)


def _create(cfg) -> dict[str, LabeledTexts]:
    if not cfg.get("path"):
        raise ConfigError("data=hf_datasets needs data.path: a hub dataset name (e.g. imdb, or glue with "
                          "data.subset=sst2), a save_to_disk directory, or a builder (csv, json, parquet) with "
                          "data.data_files=...")
    tables = _load(cfg)
    wanted = dict(cfg.get("splits") or {})
    if set(wanted) - set(SPLITS) or not wanted.get("train"):
        raise ConfigError(f"data.splits={wanted} must map train (required), val and test to the dataset's split "
                          f"names; its splits: {', '.join(tables)}")
    if wanted["train"] not in tables:
        raise DataError(f"data.splits.train='{wanted['train']}' is not a split of '{_name(cfg)}'; its splits: "
                        f"{', '.join(tables)}")
    given = {}
    for split, name in wanted.items():
        if name in tables:
            given[split] = _texts(tables[name], cfg, f"{_name(cfg)} {name}")
        elif name:
            log.info("'%s' has no split '%s' (its splits: %s): %s is carved from train", _name(cfg), name,
                     ", ".join(tables), split)
    return three_splits(given, cfg, what="splits")


def _name(cfg) -> str:
    return str(cfg.path) + (f"/{cfg.subset}" if cfg.get("subset") else "")


def _texts(table, cfg, source: str) -> LabeledTexts:
    """One split's rows through text_files' code; ClassLabel integers become their names first."""
    from datasets import ClassLabel

    names = {c: f.names for c, f in table.features.items() if isinstance(f, ClassLabel)}
    if not cfg.get("label_columns") and names:  # the dataset's own label columns, not every other one (ids)
        cfg = _with(cfg, label_columns=list(names))
    rows = table.to_list()
    for c, classes in names.items():
        for i, r in enumerate(rows):
            if not 0 <= r[c] < len(classes):  # -1: unlabelled (e.g. glue's hidden test labels)
                raise DataError(f"{source}: row {i + 1} has no label in column '{c}' ({r[c]}); this split is "
                                f"unlabelled: map another split (data.splits.test=null carves test from train)")
            r[c] = classes[r[c]]
    return labeled_texts(rows, [f"{source}: row {i + 1}" for i in range(len(rows))], cfg, source, names)


def _load(cfg) -> dict:
    """{split name: datasets.Dataset}: ``load_from_disk`` for a saved directory, else ``load_dataset``."""
    try:
        import datasets
    except ImportError:
        raise ConfigError("data=hf_datasets needs the datasets package (pip install datasets), or export the "
                          "data to csv/jsonl files and use data=text_files") from None
    path = str(cfg.path)
    local = Path(path).expanduser()
    offline = None
    if path.startswith(("/", ".", "~")) and not local.exists():  # a hub name is "name" or "owner/name"
        raise DataError(f"data.path={path} does not exist; valid: a save_to_disk directory, a hub dataset name, "
                        f"or a builder (csv, json, parquet) with data.data_files=...")
    try:
        if (local / "dataset_dict.json").is_file() or (local / "state.json").is_file():  # save_to_disk
            loaded = datasets.load_from_disk(str(local))
        else:
            hub = not local.exists() and path not in datasets.packaged_modules._PACKAGED_DATASETS_MODULES
            offline = unreachable(datasets.config.HF_HUB_OFFLINE) if hub else None
            with _offline(offline is not None):
                loaded = datasets.load_dataset(path, cfg.get("subset"), data_files=_plain(cfg.get("data_files")))
    except ConnectionError as e:
        raise DataError(f"data.path={path} could not be reached ({offline or e}) and is not in the local datasets "
                        f"cache ({datasets.config.HF_DATASETS_CACHE}); supply it as a local directory written by "
                        f"Dataset(Dict).save_to_disk (data.path=/that/dir), or export it to csv/jsonl files and use "
                        f"data=text_files") from None
    except (FileNotFoundError, ValueError) as e:  # unknown name or file, bad subset, unreadable files
        raise DataError(f"data.path={path}"
                        + (f" data.subset={cfg.subset}" if cfg.get("subset") else "")
                        + f" could not be loaded: {e}") from None
    return {"train": loaded} if isinstance(loaded, datasets.Dataset) else dict(loaded)


def _with(cfg, **values):
    """The column keys ``labeled_texts`` reads, some replaced."""
    from omegaconf import OmegaConf

    keys = ("text_column", "text_pair_column", "label_columns", "classes")
    return OmegaConf.create({**{k: _plain(cfg.get(k)) for k in keys}, **values})


def _plain(value):
    from omegaconf import OmegaConf

    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


@contextmanager
def _offline(offline: bool):
    """The client in offline mode, where its cache still answers, instead of half a minute of retries."""
    import datasets
    from huggingface_hub import constants

    saved = datasets.config.HF_HUB_OFFLINE, constants.HF_HUB_OFFLINE
    if offline:
        datasets.config.HF_HUB_OFFLINE = constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE, constants.HF_HUB_OFFLINE = saved
