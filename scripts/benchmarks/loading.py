"""Data loading: the image pipeline alone (the train DataLoader with augmentation) for
``num_workers`` in (0, 1, 2): images/s and images/s per loading process, next to the training
throughput, so one can see whether loading or compute is the bottleneck.
"""
from __future__ import annotations

import time
from pathlib import Path

from transferlab.data import batch_size

from .common import COMMON, build, compose, train_loader


def bench_loading(setting: list[str], tmp: Path, epochs: int, workers=(0, 1, 2)) -> dict:
    rows = []
    for w in workers:
        plan = compose([*COMMON, *setting, "strategy=finetune", f"data.num_workers={w}"], tmp / "loading")
        loader = train_loader(build(plan).datamodule)
        for _ in loader:  # warm-up pass: starts the (persistent) workers
            pass
        n, start = 0, time.perf_counter()
        for _ in range(epochs):
            for inputs, _labels in loader:
                n += batch_size(inputs)
        seconds = time.perf_counter() - start
        rate = n / seconds
        # num_workers=0 loads in the training process itself: one loading process.
        rows.append({"num_workers": w, "images_per_s": round(rate, 1),
                     "images_per_s_per_worker": round(rate / max(1, w), 1)})
        del loader
    return {"setting": {"data": plan.data.label, "input_size": plan.data.input_size,
                        "batch_size": plan.data.batch_size, "augment": bool(plan.data.augment.enabled),
                        "epochs": epochs},
            "rows": rows}


def loading_share(training_samples_per_s: float, loading: dict) -> float:
    """Share of a training step spent loading when the training process loads itself (num_workers=0)."""
    in_process = next(r for r in loading["rows"] if r["num_workers"] == 0)["images_per_s"]
    return round(training_samples_per_s / in_process, 4)
