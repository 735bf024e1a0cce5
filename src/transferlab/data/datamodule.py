"""The LightningDataModule: one data stream per distinct dataset among the tasks, batches per stream.

A batch is ``(inputs, {column: labels})`` where ``inputs`` is a mapping the model reads
(``{"pixel_values": ...}`` from the model family's transform, ``{"features": ...}`` from cached
features). Training batches are a dict ``{stream: batch}`` drawn by Lightning's ``CombinedLoader``;
its mode defines an epoch: ``max_size_cycle`` (default) is one pass over the largest stream while
smaller ones cycle, ``min_size`` stops with the smallest, ``sequential`` runs streams one after
another. Validation and test iterate every stream once, in task order.

No training batch holds a single image: BatchNorm cannot normalise one sample per channel, so a
last batch of one joins the batch before it (``NoLoneBatches``), per stream and per rank.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from pytorch_lightning import LightningDataModule
from pytorch_lightning.utilities import CombinedLoader
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, SequentialSampler

from transferlab.data import create_splits
from transferlab.data.features import FeatureSet, as_batch, backbone_digest, cached_features
from transferlab.errors import ConfigError, DataError


class Transformed(Dataset):
    def __init__(self, base, transform):
        # ``bind``: a transform that depends on its dataset (text augmentation draws words from it)
        self.base, self.transform = base, transform.bind(base) if hasattr(transform, "bind") else transform

    def __len__(self):
        return len(self.base)

    def __getitem__(self, i):
        raw, labels = self.base[i]
        return self.transform(raw), labels


class NoLoneBatches(BatchSampler):
    """Batches of ``batch_size`` where a last batch of one image joins the one before (a batch of
    ``batch_size + 1``): every image is still seen once per epoch, and BatchNorm in training mode
    never gets one value per channel. Lightning re-creates it around its DistributedSampler (same
    signature as ``BatchSampler``), so each rank's share is merged alike; every rank has the same
    share size, hence the same number of batches."""

    def _merges(self) -> bool:
        n = len(self.sampler)
        return self.batch_size > 1 and not self.drop_last and n > 1 and n % self.batch_size == 1

    def __len__(self) -> int:
        return super().__len__() - self._merges()

    def __iter__(self):
        held = None
        for batch in super().__iter__():
            if held is not None and len(batch) == 1 and self.batch_size > 1:
                batch = held + batch  # the last batch: a lone image
            elif held is not None:
                yield held
            held = batch
        if held is not None:
            yield held


def create_streams(data, tasks: list, task_data: dict) -> dict[str, dict]:
    """Each stream's data settings and splits, built once, with every task's label column checked.

    ``tasks``: the task specs (``tasks.TaskSpec``); ``task_data``: task name -> the data settings of a
    task with data of its own. Returns stream -> ``{"data", "splits", "tasks"}``."""
    streams = {}
    for spec in tasks:
        stream = spec.stream
        if stream not in streams:
            own = task_data.get(spec.name, data)
            streams[stream] = {"data": own, "splits": create_splits(own, spec.column if spec.reads_labels else None),
                               "tasks": []}
        streams[stream]["tasks"].append(spec)
        if not spec.reads_labels:
            continue
        train = streams[stream]["splits"]["train"]
        if spec.column not in train.classes:
            raise ConfigError(f"task '{spec.name}' reads label column '{spec.column}', which data "
                              f"'{streams[stream]['data'].label}' does not have; columns: {', '.join(train.classes)}")
        check_train_classes(streams[stream]["data"], train, spec.column)
    return streams


def check_train_classes(data, train, column: str) -> None:
    """Every class of ``column`` has training items: a class seen only in val/test gets a head output
    that never trains and scores 0 (an explicit split column or a tiny class can cause it)."""
    names = train.classes[column]
    absent = [names[c] for c in sorted(set(range(len(names))) - set(train.labels(column).tolist()))]
    if absent:
        raise DataError(f"class(es) {', '.join(map(repr, absent))} of label column '{column}' have no {train.what}s in "
                        f"the train split of data '{data.label}' (only in val/test); give them training "
                        f"{train.what}s or leave them out with data.classes")


class TransferDataModule(LightningDataModule):
    """``transform(data, train, tasks)``: the model family's raw item -> inputs, per stream.

    ``features_from``/``encode``: a frozen backbone whose outputs are cached per split (no
    augmentation then), extracted under ``precision`` as the trainer computes; loaders then yield
    features. ``feature_cache`` shares them across runs; without it, ``store_dir`` keeps large ones
    on disk for this run."""

    def __init__(self, streams: dict[str, dict], transform: Callable, loader_cfg, mode: str = "max_size_cycle",
                 features_from: torch.nn.Module | None = None, encode: Callable | None = None,
                 precision: str = "32-true", store_dir=None, feature_cache=None):
        super().__init__()
        self.streams, self.loader_cfg, self.mode, self.transform = streams, loader_cfg, mode, transform
        self.features_from, self.encode, self.precision = features_from, encode, precision
        self.store_dir, self.feature_cache = store_dir, feature_cache
        self._digest = None  # of the frozen backbone: hashed once, not once per split
        self.datasets = {}
        for name, stream in streams.items():
            for split, ds in stream["splits"].items():
                augment = split == "train" and features_from is None
                self.datasets[(name, split)] = Transformed(ds, transform(stream["data"], augment, stream["tasks"]))
        self.predict_set = None

    def _loader(self, stream: str, split: str) -> DataLoader:
        c = self.loader_cfg
        workers = c.num_workers
        pin = torch.cuda.is_available() if c.get("pin_memory") is None else c.pin_memory
        dataset = self.datasets[(stream, split)]
        collate = getattr(getattr(dataset, "transform", None), "collate", None)  # text: tokenise + pad per batch
        if self.features_from is not None:
            if not isinstance(dataset, FeatureSet):
                store = self.store_dir and Path(self.store_dir) / f"{stream.replace(':', '_')}_{split}.npy"
                if self.feature_cache and self._digest is None:
                    self._digest = backbone_digest(self.features_from)
                dataset = self.datasets[(stream, split)] = cached_features(
                    self.features_from, self.encode, dataset, c.batch_size, workers, store=store,
                    digest=self._digest, cache_dir=self.feature_cache and Path(self.feature_cache),
                    precision=self.precision)
            workers, pin, collate = 0, False, as_batch  # features are already tensors in memory
        if split != "train":  # evaluation sees every image, in order, in batches of any size
            return DataLoader(dataset, batch_size=c.batch_size, collate_fn=collate, num_workers=workers,
                              pin_memory=pin, persistent_workers=workers > 0)
        self._check_train_size(stream, len(dataset))
        return DataLoader(dataset, batch_sampler=NoLoneBatches(RandomSampler(dataset), c.batch_size, False),
                          collate_fn=collate, num_workers=workers, pin_memory=pin, persistent_workers=workers > 0)

    def _check_train_size(self, stream: str, images: int) -> None:
        """One image per device would be a batch of one that no merging can avoid."""
        devices = self.trainer.world_size if self.trainer is not None else 1
        if -(-images // devices) < 2:
            data = self.streams[stream]["data"]
            raise DataError(f"the train split of data '{data.label}' holds {images} item(s) for "
                            f"{devices} device(s); training needs at least 2 per device (BatchNorm cannot "
                            f"normalise a batch of one): add training images (data.train_per_class, data.classes) "
                            f"or use fewer devices")

    def plain_loader(self, stream: str, split: str) -> DataLoader:
        """``split`` of ``stream`` under the evaluation transform, in order: the same batches every time
        (e.g. to recompute BatchNorm statistics of fused weights on training images)."""
        own = self.streams[stream]
        dataset = Transformed(own["splits"][split], self.transform(own["data"], False, own["tasks"]))
        batches = NoLoneBatches(SequentialSampler(dataset), self.loader_cfg.batch_size, False)  # BatchNorm trains
        return DataLoader(dataset, batch_sampler=batches, num_workers=self.loader_cfg.num_workers,
                          collate_fn=getattr(dataset.transform, "collate", None))

    def train_dataloader(self):
        return CombinedLoader({name: self._loader(name, "train") for name in self.streams}, mode=self.mode)

    def val_dataloader(self):
        return [self._loader(name, "val") for name in self.streams]

    def test_dataloader(self):
        return [self._loader(name, "test") for name in self.streams]

    def serve(self, items) -> None:
        """Unlabelled ``items`` (``base.Unlabelled``) for ``predict_dataloader``, under the evaluation
        transform of the run's own data."""
        own = next(iter(self.streams.values())) if self.streams else None
        data = own["data"] if own else self.loader_cfg
        self.predict_set = Transformed(items, self.transform(data, False, ()))

    def predict_dataloader(self):
        if self.predict_set is None:
            raise DataError("no inputs to predict on: give them with TransferDataModule.serve(items)")
        c = self.loader_cfg
        return DataLoader(self.predict_set, batch_size=c.batch_size, num_workers=c.num_workers,
                          collate_fn=getattr(self.predict_set.transform, "collate", None))
