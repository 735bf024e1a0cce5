"""Text: training samples/s of tl-train vs a plain loop on the tiny BERT (``overhead``'s measurement on
text, where every batch is tokenised and padded by the collate), and tokenisation throughput alone,
so a user sees whether tokenising could be the bottleneck (its share of a plain training step)."""
from __future__ import annotations

import time
from pathlib import Path

from .common import build, compose
from .overhead import bench_overhead

TEXT_SETTING = ["model=tiny_bert", "data=synthetic_text", "tasks.main.column=topic", "data.num_samples=2000",
                "data.batch_size=64"]


def tokenisation(tmp: Path, reps: int = 3) -> dict:
    """Texts/s through the run's own collate (tokenise, truncate, pad), over the training split."""
    parts = build(compose(TEXT_SETTING + ["source=none"], tmp / "tokenise"))
    dataset = parts.datamodule.datasets[("data", "train")]
    items = [dataset[i] for i in range(len(dataset))]
    best = float("inf")
    for _ in range(reps):
        start = time.perf_counter()
        for i in range(0, len(items), 64):
            dataset.transform.collate(items[i:i + 64])
        best = min(best, time.perf_counter() - start)
    return {"texts": len(items), "texts_per_s": round(len(items) / best, 1)}


def bench_text(tmp: Path, warmup: int, epochs: int, reps: int) -> dict:
    result = bench_overhead(TEXT_SETTING + ["source=none"], tmp, warmup, epochs, reps, predecode=False)
    result["tokenisation"] = tokenisation(tmp)
    result["tokenisation_share_of_plain_step"] = round(
        result["plain_samples_per_s"] / result["tokenisation"]["texts_per_s"], 4)
    return result
