"""Cached backbone features for a backbone that never changes (linear probing without augmentation).

The backbone runs once over each split instead of every epoch; the head then trains on the stored
features. Extraction happens on the first request of a split's loader, i.e. inside ``trainer.fit`` /
``trainer.test``, so its cost shows up in ``fit_seconds``.

Features are also shared across runs: a linear probe is swept over seeds, learning rates and epochs
on one backbone, and every job of such a sweep would otherwise pay the same extraction. The key is a
hash of what determines the features (the backbone's weights and structure, the images, the
transform, the precision), so a hit can only return what extraction would compute. Entries are
published by an atomic rename, so concurrent jobs never read a half-written one. Without a shared
cache (or for data that cannot be fingerprinted cheaply) features stay in memory, or in a
memory-mapped file under the run directory when they would exceed ``max_memory_gb``.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from contextlib import nullcontext
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from transferlab.data.base import digest as sha256

log = logging.getLogger(__name__)

FORMAT = 1  # bump when what is stored changes


class FeatureSet(Dataset):
    """Whole batches are gathered by one indexing op (``__getitems__``), not sample by sample and
    collated: with the backbone gone, per-sample Python would be most of an epoch."""

    def __init__(self, features: torch.Tensor, labels: dict[str, torch.Tensor]):
        self.features, self.labels = features, labels

    def __len__(self):
        return len(self.features)

    def __getitem__(self, i):
        return {"features": self.features[i]}, {k: v[i] for k, v in self.labels.items()}

    def __getitems__(self, indices):
        idx = torch.as_tensor(indices, dtype=torch.long)
        return {"features": self.features[idx]}, {k: v[idx] for k, v in self.labels.items()}


def as_batch(batch):
    """collate_fn for a FeatureSet: ``__getitems__`` already returned the batch."""
    return batch


def cached_features(backbone: torch.nn.Module, encode, dataset, batch_size: int, num_workers: int, *,
                    cache_dir: Path | None = None, store: Path | None = None, precision: str = "32-true",
                    max_memory_gb: float = 2.0, digest: str | None = None) -> FeatureSet:
    """The backbone's features of ``dataset`` (a ``Transformed`` view): from the shared cache under
    ``cache_dir`` when an earlier run extracted them, else extracted (and published there).
    ``encode(inputs)`` computes them (the model's, so families differ only there); ``digest``:
    ``backbone_digest(backbone)``, when the caller already has it (one per run, not per split).

    ``precision``: the trainer's, so features match what the uncached run computes (mixed precision
    runs under the same autocast). No activations are kept, so GPU batches are twice the training
    size (on a CPU, larger batches only spill out of cache and run slower)."""
    key = None
    if cache_dir is not None:
        cache_dir = Path(cache_dir)
        key = feature_key(digest or backbone_digest(backbone), dataset, precision)
    if key is not None:
        hit = _load(cache_dir / key, len(dataset), max_memory_gb)
        if hit is not None:
            log.info("reused %d cached backbone features from %s", len(dataset), cache_dir / key)
            return hit
    device = next(backbone.parameters()).device
    if device.type == "cuda":
        batch_size *= 2
    # Leave the global RNG as it was, so cached training shuffles exactly like uncached training.
    with torch.random.fork_rng(devices=[]), torch.no_grad(), autocast(precision, device):
        tmp = _reserve(cache_dir, key) if key is not None else None
        extract = partial(_extract, backbone, encode, dataset, batch_size, num_workers, max_memory_gb=max_memory_gb)
        if tmp is None:
            return extract(store)
        try:
            try:
                result = extract(tmp / "features.npy")
            except OSError as e:  # e.g. a full disk under a large set's memory-mapped file
                _unwritable(cache_dir, e)
                return extract(store)
            try:
                return _publish(result, tmp, cache_dir / key)
            except OSError as e:  # a full disk, a quota: the cache is optional, this run's features are not
                _unwritable(cache_dir, e)
                return result
        finally:
            shutil.rmtree(tmp, ignore_errors=True)  # gone after a successful publish; else a loser's or a failure's


def autocast(precision: str, device: torch.device):
    """The autocast Lightning's mixed-precision plugins run the forward pass under (none otherwise)."""
    dtype = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(str(precision))
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()


def backbone_digest(backbone: torch.nn.Module) -> str:
    """Structure (incl. what weights do not show: pooling, dropout kind) and every weight and buffer."""
    parts = [repr(backbone).encode()]
    for name, value in backbone.state_dict().items():
        parts += [f"{name}|{value.dtype}|{tuple(value.shape)}".encode(),
                  value.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy()]
    return sha256(*parts)


def feature_key(backbone: str, dataset, precision: str) -> str | None:
    """A digest of everything the features depend on, or None when the images cannot be identified."""
    content = dataset.base.fingerprint() if hasattr(dataset, "base") else None
    if content is None:
        return None
    parts = (FORMAT, torch.__version__, precision, backbone, content, repr(dataset.transform))
    return sha256("|".join(map(str, parts)).encode())[:32]


def _load(entry: Path, length: int, max_memory_gb: float) -> FeatureSet | None:
    if not entry.exists():
        return None
    try:
        meta = json.loads((entry / "meta.json").read_text())
        if meta.get("format") != FORMAT or meta.get("length") != length:
            raise ValueError(f"stale entry {meta}")
        big = (entry / "features.npy").stat().st_size > max_memory_gb * 2**30
        # copy-on-write map: writable for torch, never written back, paged in as read
        features = np.load(entry / "features.npy", mmap_mode="c" if big else None, allow_pickle=False)
        with np.load(entry / "labels.npz", allow_pickle=False) as npz:
            labels = {k: torch.from_numpy(npz[k]) for k in npz.files}
        if features.shape[0] != length or set(labels) != set(meta.get("columns", labels)):
            raise ValueError("truncated entry")
    except (OSError, ValueError, KeyError) as e:
        # Entries are published whole, so this one was damaged or left by another version: replace it.
        log.warning("feature cache entry %s is unreadable (%s); extracting again", entry, e)
        shutil.rmtree(entry, ignore_errors=True)
        return None
    return FeatureSet(torch.from_numpy(features), labels)


def _reserve(cache_dir: Path, key: str) -> Path | None:
    """A private folder to extract into, or None (with a warning) when the cache is not writable."""
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=cache_dir))
        # mkdtemp makes it 0700 whatever the umask: give the entry a folder's usual mode, so a cache
        # shared by a group (umask 002, a setgid folder) is shared; its files get the umask's mode anyway.
        os.chmod(tmp, 0o777 & ~_umask())
        return tmp
    except OSError as e:
        _unwritable(cache_dir, e)
        return None


def _umask() -> int:
    """This process's umask, read without changing it where Linux shows it (other threads may create files)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _unwritable(cache_dir: Path, error: OSError) -> None:
    log.warning("cannot write to the feature cache %s (%s); features stay with this run", cache_dir, error)


def _publish(result: FeatureSet, tmp: Path, entry: Path) -> FeatureSet:
    if not (tmp / "features.npy").exists():  # small sets were extracted into memory, large ones into the file
        np.save(tmp / "features.npy", result.features.numpy())
    np.savez(tmp / "labels.npz", **{k: v.numpy() for k, v in result.labels.items()})
    (tmp / "meta.json").write_text(json.dumps({"format": FORMAT, "length": len(result),
                                               "dim": int(result.features.shape[1]), "columns": sorted(result.labels)}))
    try:
        os.rename(tmp, entry)  # atomic; fails when another job published the same entry first
    except OSError:
        pass
    return result


def _extract(backbone, encode, dataset, batch_size, num_workers, store, max_memory_gb) -> FeatureSet:
    weight = next(backbone.parameters())
    was_training = backbone.training
    backbone.eval()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        collate_fn=getattr(getattr(dataset, "transform", None), "collate", None))
    features, labels, start = None, {}, 0
    for inputs, y in loader:
        inputs = {k: v.to(weight.device, dtype=weight.dtype if v.is_floating_point() else v.dtype, non_blocking=True)
                  for k, v in inputs.items()}
        f = encode(inputs).float().cpu()
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
    log.info("extracted %d x %d backbone features%s", len(dataset), features.shape[1],
             f" into {store}" if store is not None and store.exists() else "")
    return FeatureSet(features, labels)
