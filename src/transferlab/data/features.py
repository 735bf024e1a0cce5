"""Cached backbone features for a backbone that never changes (linear probing without augmentation).

The backbone runs once over each split instead of every epoch; the head then trains on the stored
features. Features stay in memory, or in a memory-mapped file under the run directory when they
would exceed ``max_memory_gb``. Extraction happens on the first request of a split's loader, i.e.
inside ``trainer.fit`` / ``trainer.test``, so its cost shows up in ``fit_seconds``.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

log = logging.getLogger(__name__)


class FeatureSet(Dataset):
    def __init__(self, features: torch.Tensor, labels: dict[str, torch.Tensor]):
        self.features, self.labels = features, labels

    def __len__(self):
        return len(self.features)

    def __getitem__(self, i):
        return self.features[i], {k: v[i] for k, v in self.labels.items()}


def extract_features(backbone: torch.nn.Module, dataset, batch_size: int, num_workers: int,
                     store: Path | None = None, max_memory_gb: float = 2.0, autocast=None) -> FeatureSet:
    """``autocast``: the trainer's precision context, so features match what the uncached run computes.
    No activations are kept, so batches are twice the training size."""
    from contextlib import nullcontext

    # Leave the global RNG as it was, so cached training shuffles exactly like uncached training.
    with torch.random.fork_rng(devices=[]), torch.no_grad(), (autocast or nullcontext()):
        return _extract(backbone, dataset, 2 * batch_size, num_workers, store, max_memory_gb)


def _extract(backbone, dataset, batch_size, num_workers, store, max_memory_gb) -> FeatureSet:
    device = next(backbone.parameters()).device
    was_training = backbone.training
    backbone.eval()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    features, labels, start = None, {}, 0
    for x, y in loader:
        f = backbone(x.to(device, non_blocking=True)).float().cpu()
        if features is None:
            shape = (len(dataset), f.shape[1])
            if store is not None and shape[0] * shape[1] * 4 > max_memory_gb * 2**30:
                store.parent.mkdir(parents=True, exist_ok=True)
                features = torch.from_numpy(np.lib.format.open_memmap(store, mode="w+", dtype=np.float32, shape=shape))
            else:
                features = torch.empty(shape)
            labels = {k: torch.empty(len(dataset), dtype=torch.long) for k in y}
        features[start:start + len(f)] = f
        for k, v in y.items():
            labels[k][start:start + len(f)] = v
        start += len(f)
    backbone.train(was_training)
    log.info("cached %d x %d backbone features%s", len(dataset), features.shape[1], f" in {store}" if store and
             not isinstance(features, torch.Tensor) else "")
    return FeatureSet(features, labels)
