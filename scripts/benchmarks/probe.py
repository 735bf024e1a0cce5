"""Feature caching: real ``run.train`` linear-probe runs (no augmentation) to the same number of
epochs, ratio of their ``fit_seconds``: ``strategy.cache_features=false`` against a cached run whose
features are in the shared feature cache (every run after the first on one backbone and data: other
seeds, head learning rates, epoch counts). Target: >= 10. Also reported: the first cached run, which
extracts the features. It runs the backbone over train and val once, about one uncached epoch, so
its ratio stays below the epoch count (at 10 epochs, below 10).
"""
from __future__ import annotations

import statistics
from pathlib import Path

from transferlab import run

from .common import COMMON, EpochTimer, compose

TARGET = 10.0  # uncached fit_seconds / cached fit_seconds


def probe_run(setting: list[str], run_dir: Path, epochs: int, cache: bool, feature_cache: Path) -> dict:
    plan = compose([*COMMON, *setting, "strategy=linear_probe", "data.augment.enabled=false",
                    f"strategy.cache_features={str(cache).lower()}", f"trainer.max_epochs={epochs}",
                    f"paths.feature_cache={feature_cache}"], run_dir)
    timer = EpochTimer()
    metrics = run.train(plan, callbacks=(timer,))
    epoch_seconds = timer.epoch_seconds()
    steady = statistics.median(epoch_seconds[1:]) if len(epoch_seconds) > 1 else epoch_seconds[0]
    return {"fit_seconds": metrics["fit_seconds"], "test_acc": metrics.get("test/acc"),
            "val_acc_best": metrics.get("val/acc_best"), "epochs": len(epoch_seconds),
            "steady_epoch_seconds": round(steady, 4),
            "first_epoch_seconds": round(epoch_seconds[0], 4),
            # fit_seconds outside the epochs: set-up before the first one (where a cached run extracts
            # the train and val features, or finds them in the shared cache) and tear-down after the last
            "outside_epochs_seconds": round(max(0.0, metrics["fit_seconds"] - sum(epoch_seconds)), 3)}


def bench_probe(setting: list[str], tmp: Path, epochs: int) -> dict:
    """Three runs of one linear probe: uncached; cached, first on this backbone and data (it extracts);
    cached again, as every later run of a sweep over seeds / head settings on the same backbone is."""
    features = tmp / "feature_cache"  # empty: the first cached run must extract
    uncached = probe_run(setting, tmp / "probe_uncached", epochs, cache=False, feature_cache=features)
    first = probe_run(setting, tmp / "probe_cached_first", epochs, cache=True, feature_cache=features)
    shared = probe_run(setting, tmp / "probe_cached_shared", epochs, cache=True, feature_cache=features)
    plan = compose([*COMMON, *setting], tmp / "probe_cfg")
    ratio = uncached["fit_seconds"] / shared["fit_seconds"]
    return {
        "setting": {"model": plan.model.name, "data": plan.data.label, "input_size": plan.data.input_size,
                    "batch_size": plan.data.batch_size, "epochs": epochs, "augment": False},
        "uncached": uncached, "cached_first_run": first, "cached": shared,
        "ratio": round(ratio, 3),
        "ratio_first_run": round(uncached["fit_seconds"] / first["fit_seconds"], 3),
        "steady_epoch_ratio": round(uncached["steady_epoch_seconds"] / max(1e-9, shared["steady_epoch_seconds"]), 2),
        # The first cached run runs the backbone over train and val once (the extraction, about one
        # uncached epoch), so its ratio stays below the epoch count whatever the model.
        "ratio_first_run_upper_bound": epochs,
        "extraction_seconds": round(max(0.0, first["outside_epochs_seconds"] - shared["outside_epochs_seconds"]), 3),
        "test_acc_difference": max(abs(uncached["test_acc"] - r["test_acc"]) for r in (first, shared)),
        "target": TARGET, "pass": ratio >= TARGET,
    }
