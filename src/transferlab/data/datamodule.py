"""The LightningDataModule: one data source per distinct dataset among the tasks, batches per source.

Training batches are a dict ``{source: (images, {column: labels})}`` drawn by Lightning's
``CombinedLoader``; its mode defines an epoch: ``max_size_cycle`` (default) is one pass over the
largest source while smaller ones cycle, ``min_size`` stops with the smallest, ``sequential`` runs
sources one after another. Validation and test iterate every source once, in task order.
"""
from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import OmegaConf
from pytorch_lightning import LightningDataModule
from pytorch_lightning.utilities import CombinedLoader
from torch.utils.data import DataLoader, Dataset

from transferlab.data import create_splits
from transferlab.data.features import FeatureSet, as_batch, backbone_digest, cached_features
from transferlab.data.transforms import create_transform
from transferlab.errors import ConfigError, DataError
from transferlab.tasks import Task


class Transformed(Dataset):
    def __init__(self, base, transform):
        self.base, self.transform = base, transform

    def __len__(self):
        return len(self.base)

    def __getitem__(self, i):
        image, labels = self.base[i]
        return self.transform(image), labels


def create_sources(data_cfg, tasks: list[Task]) -> dict[str, dict]:
    """Build each source's splits once, check every task's label column and class count, fill them in."""
    sources = {}
    for task in tasks:
        if task.source not in sources:
            cfg = OmegaConf.merge(data_cfg, task.data) if task.data else data_cfg
            sources[task.source] = {"cfg": cfg, "splits": create_splits(cfg, task.label)}
        train = sources[task.source]["splits"]["train"]
        if task.label not in train.classes:
            raise ConfigError(f"task '{task.name}' reads label column '{task.label}', which data "
                              f"'{data_cfg.get('name', data_cfg.kind)}' does not have; columns: {', '.join(train.classes)}")
        names = train.classes[task.label]
        if task.num_classes is not None and task.num_classes != len(names):
            raise DataError(f"task '{task.name}' declares num_classes={task.num_classes} but its data has "
                            f"{len(names)} classes in column '{task.label}' ({', '.join(names[:10])}); "
                            f"drop num_classes or fix it")
        task.num_classes, task.class_names = len(names), list(names)
    return sources


class TransferDataModule(LightningDataModule):
    """``features_from``: a frozen backbone whose outputs are cached per split (no augmentation then);
    loaders then yield features instead of images. ``feature_cache`` shares them across runs;
    without it, ``store_dir`` keeps large ones on disk for this run."""

    def __init__(self, sources: dict[str, dict], model_data_config: dict, loader_cfg, mode: str = "max_size_cycle",
                 features_from: torch.nn.Module | None = None, store_dir=None, feature_cache=None):
        super().__init__()
        self.sources, self.loader_cfg, self.mode = sources, loader_cfg, mode
        self.features_from, self.store_dir, self.feature_cache = features_from, store_dir, feature_cache
        self._digest = None  # of the frozen backbone: hashed once, not once per split
        if mode not in ("max_size_cycle", "min_size", "max_size", "sequential"):
            raise ConfigError(f"unknown multitask.sampling '{mode}'; valid: max_size_cycle, min_size, max_size, sequential")
        self.datasets = {}
        for name, src in sources.items():
            cfg = src["cfg"]
            for split, ds in src["splits"].items():
                augment = split == "train" and features_from is None
                tf = create_transform(model_data_config, cfg.augment, train=augment, input_size=cfg.get("input_size"))
                self.datasets[(name, split)] = Transformed(ds, tf)

    def _loader(self, source: str, split: str) -> DataLoader:
        c = self.loader_cfg
        if c.batch_size <= 0:
            raise ConfigError(f"data.batch_size={c.batch_size}; it must be a positive integer")
        workers = c.num_workers
        pin = torch.cuda.is_available() if c.get("pin_memory") is None else c.pin_memory
        dataset, collate = self.datasets[(source, split)], None
        if self.features_from is not None:
            if not isinstance(dataset, FeatureSet):
                store = self.store_dir and Path(self.store_dir) / f"{source.replace(':', '_')}_{split}.npy"
                if self.feature_cache and self._digest is None:
                    self._digest = backbone_digest(self.features_from)
                trainer = self.trainer
                dataset = self.datasets[(source, split)] = cached_features(
                    self.features_from, dataset, c.batch_size, workers, store=store, digest=self._digest,
                    cache_dir=self.feature_cache and Path(self.feature_cache),
                    precision=str(trainer.precision) if trainer is not None else "32-true",
                    autocast=trainer.precision_plugin.forward_context() if trainer is not None else None)
            workers, pin, collate = 0, False, as_batch  # features are already tensors in memory
        return DataLoader(dataset, batch_size=c.batch_size, shuffle=split == "train", collate_fn=collate,
                          num_workers=workers, pin_memory=pin, persistent_workers=workers > 0,
                          drop_last=False)

    def train_dataloader(self):
        return CombinedLoader({name: self._loader(name, "train") for name in self.sources}, mode=self.mode)

    def val_dataloader(self):
        return [self._loader(name, "val") for name in self.sources]

    def test_dataloader(self):
        return [self._loader(name, "test") for name in self.sources]
