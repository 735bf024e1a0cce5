#!/usr/bin/env python
"""Measure transferlab's speed in one process; print a table and a JSON blob.

1. **Framework overhead**: training throughput (samples/s) of tl-train's module + Trainer against a
   plain PyTorch loop doing the same work (same ``create_model``, the same DataLoader and transform
   taken from the DataModule, the same ``create_optimizer`` / ``create_scheduler`` stepped per batch,
   cross-entropy, same precision). Steady state: a warm-up epoch, then timed epochs; framework and
   plain runs alternate, and the ratio is the median over repetitions of framework / plain (each
   pair adjacent in time). Also reported: the ratio per CPU-second of this process, which other
   processes on a shared machine cannot skew. Target: ratio >= 0.95.
2. **Feature caching**: real ``run.train`` linear-probe runs (no augmentation) to the same number of
   epochs, ratio of their ``fit_seconds``: ``strategy.cache_features=false`` against a cached run
   whose features are in the shared feature cache (every run after the first on one backbone and
   data: other seeds, head learning rates, epoch counts). Target: >= 10. Also reported: the first
   cached run, which extracts the features. It runs the backbone over train and val once, about one
   uncached epoch, so its ratio stays below the epoch count (at 10 epochs, below 10).
3. **Data loading**: the image pipeline alone (the train DataLoader with augmentation) for
   ``num_workers`` in (0, 1, 2): images/s and images/s per loading process, next to the training
   throughput, so one can see whether loading or compute is the bottleneck.
4. **GPU** (only when CUDA is available): resnet50 and vit_small at 224 px, bf16 autocast +
   channels_last, images/s for forward+backward+optimizer step, and the fraction of the GPU's peak
   dense bf16 FLOP/s achieved (FLOPs counted with ``torch.utils.flop_counter.FlopCounterMode``).

On a CPU it uses a small model and runs in a few minutes (``--quick``: well under a minute). The
exit code is 0 whatever the figures are (this is a measurement); the JSON holds ``"pass"`` fields.

    python scripts/bench.py [--quick] [--json PATH] [--threads N] [--probe-epochs N]
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from contextlib import nullcontext
from pathlib import Path

# Never touch the network (weights are random: speed does not depend on them) and stay quiet.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("PYTHONWARNINGS", "ignore")  # DataLoader workers inherit it
warnings.filterwarnings("ignore")

import pytorch_lightning as pl  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from pytorch_lightning import Callback  # noqa: E402

from transferlab import run  # noqa: E402
from transferlab.config import compose_config, set_value  # noqa: E402
from transferlab.models import create_model  # noqa: E402
from transferlab.optim import create_optimizer, create_scheduler  # noqa: E402
from transferlab.tasks import Task, create_tasks  # noqa: E402

for _name in ("pytorch_lightning", "lightning", "lightning.pytorch", "lightning_fabric", "transferlab"):
    logging.getLogger(_name).setLevel(logging.ERROR)

OVERHEAD_TARGET = 0.95   # framework samples/s / plain-loop samples/s
CACHE_TARGET = 10.0      # uncached fit_seconds / cached fit_seconds

# Dense (no sparsity) bf16 tensor-core peak FLOP/s by GPU name; the first matching key wins.
PEAK_BF16_FLOPS = [
    ("H100 PCIe", 756e12), ("H100 NVL", 835e12), ("H100", 989e12), ("H200", 989e12), ("GH200", 989e12),
    ("B200", 2250e12), ("A100", 312e12), ("A800", 312e12), ("L40S", 362e12), ("L40", 181e12),
    ("L4", 121e12), ("A10G", 70e12), ("A10", 125e12), ("RTX 4090", 165e12), ("RTX 3090", 71e12),
    ("V100", 125e12),  # V100 has no bf16 tensor cores; its fp16 peak as an upper bound
]

# Settings. CPU: the small model (model=tiny, timm's test_resnet) at 64 px, batch 64, on the bundled
# digits (1078 training images, augmented, loaded in the main process): ~0.1 GFLOP per image for
# forward + backward, about a tenth of a second of compute per step on one core. The linear probe
# uses ResNet-18 at 64 px, where the frozen backbone's forward pass dominates an uncached epoch, as it
# does in real linear probing. On a GPU: ResNet-50 at 224 px, bf16, on pre-decoded images.
CPU_SETTING = ["model=tiny", "data=digits", "data.input_size=64", "data.batch_size=64"]
CPU_PROBE_SETTING = ["model.name=resnet18", "data=digits", "data.input_size=64", "data.batch_size=64"]
CPU_QUICK_SETTING = ["model=tiny", "data=digits", "data.input_size=32", "data.batch_size=64"]
GPU_SETTING = ["model=resnet50", "data=synthetic", "tasks.main.label=shape", "data.num_samples=4000",
               "data.input_size=224", "data.batch_size=128", "data.num_workers=4", "trainer.precision=bf16-mixed"]
COMMON = ["model.pretrained=false", "source=none", "logger=none", "trainer.enable_progress_bar=false",
          "trainer.enable_model_summary=false"]
# Throughput runs measure training only: no validation, no checkpoints.
NO_EVAL = ["strategy=finetune", "+trainer.enable_checkpointing=false", "+trainer.limit_val_batches=0",
           "trainer.num_sanity_val_steps=0"]


def compose(overrides: list[str], run_dir: Path):
    cfg = compose_config(list(overrides))
    set_value(cfg, "paths.run_dir", str(run_dir))
    return cfg


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _batch_size(batch) -> int:
    return sum(item[0].shape[0] for item in batch.values() if item is not None)


class EpochTimer(Callback):
    """Wall-clock time of each training epoch (start to next start, so validation and checkpoints count)."""

    def __init__(self, warmup: int = 0):
        self.warmup, self.starts, self.samples, self.end, self.device = warmup, [], 0, None, torch.device("cpu")

    def on_train_epoch_start(self, trainer, pl_module):
        self.device = pl_module.device
        _sync(self.device)
        self.starts.append(time.perf_counter())
        if trainer.current_epoch == self.warmup:
            self.cpu_start = time.process_time()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.current_epoch >= self.warmup:
            self.samples += _batch_size(batch)

    def on_train_epoch_end(self, trainer, pl_module):
        _sync(self.device)
        self.epoch_end = time.perf_counter()
        self.cpu_end = time.process_time()

    def on_train_end(self, trainer, pl_module):
        _sync(self.device)
        self.end = time.perf_counter()

    def epoch_seconds(self) -> list[float]:
        return [b - a for a, b in zip(self.starts, self.starts[1:] + [self.end])]

    def steady(self) -> dict:
        """Training-only throughput over the epochs after the warm-up (start of first timed epoch to end of last)."""
        seconds = self.epoch_end - self.starts[self.warmup]
        cpu_seconds = self.cpu_end - self.cpu_start
        return {"seconds": seconds, "samples": self.samples, "samples_per_s": self.samples / seconds,
                "samples_per_cpu_s": self.samples / cpu_seconds}


class Predecoded(torch.utils.data.Dataset):
    """Every item of a dataset decoded and transformed once (a fixed augmentation draw), served from memory."""

    def __init__(self, dataset):
        items = [dataset[i] for i in range(len(dataset))]
        self.images = torch.stack([x for x, _ in items])
        self.labels = [y for _, y in items]

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i], self.labels[i]


def _build(cfg, predecode: bool):
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    tasks = create_tasks(cfg.tasks, cfg.multitask.get("monitor"))
    module, datamodule, strategy = run.build(cfg, tasks)
    if predecode:
        key = ("data", "train")
        datamodule.datasets[key] = Predecoded(datamodule.datasets[key])
    return tasks, module, datamodule, strategy


# --- 1. framework vs plain loop ------------------------------------------------------------------

def framework_epochs(cfg, run_dir: Path, warmup: int, predecode: bool) -> dict:
    """tl-train's module, strategy callback and Trainer (``run.build`` + ``run.create_trainer``)."""
    _, module, datamodule, strategy = _build(cfg, predecode)
    timer = EpochTimer(warmup)
    trainer = run.create_trainer(cfg, run_dir, [strategy, timer], loggers=[])
    trainer.fit(module, datamodule=datamodule)
    return timer.steady()


def _autocast(precision: str, device: torch.device):
    precision = str(precision)
    if precision.startswith("bf16") and "mixed" in precision:
        return lambda: torch.autocast(device.type, dtype=torch.bfloat16)
    if precision.startswith("16") and "mixed" in precision:
        return lambda: torch.autocast(device.type, dtype=torch.float16)
    if precision not in ("32", "32-true"):
        raise SystemExit(f"bench: the plain loop does not implement trainer.precision={precision}")
    return nullcontext


def plain_epochs(cfg, warmup: int, predecode: bool) -> dict:
    """The same work by hand: same model factory, DataLoader, optimizer, schedule, loss and precision."""
    tasks, module, datamodule, strategy = _build(cfg, predecode)
    del module  # the framework's own copy; the plain loop builds its model with the same factory and seed
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    model = create_model(cfg.model, tasks)
    device = torch.device("cuda" if torch.cuda.is_available() and cfg.trainer.accelerator in ("auto", "gpu", "cuda")
                          else "cpu")
    model.to(device).train()
    loader = datamodule.train_dataloader().iterables["data"]  # the very DataLoader Lightning iterates
    epochs = cfg.trainer.max_epochs
    optimizer = create_optimizer(model, cfg.optimizer,
                                 stage_lr_scale=lambda stage: strategy.lr_scale(stage, model.num_stages))
    total = len(loader) * epochs
    scheduler = create_scheduler(optimizer, cfg.scheduler, total_steps=total,
                                 steps_per_epoch=max(1, total // epochs))["scheduler"]
    scaler = torch.amp.GradScaler(device.type) if str(cfg.trainer.precision).startswith("16") else None
    autocast = _autocast(cfg.trainer.precision, device)
    task = tasks[0]
    samples, start = 0, None
    for epoch in range(epochs):
        if epoch == warmup:
            _sync(device)
            start, cpu_start = time.perf_counter(), time.process_time()
        for x, labels in loader:
            x = x.to(device, non_blocking=True)
            y = labels[task.label].to(device, non_blocking=True)
            with autocast():
                loss = F.cross_entropy(model(x)[task.name], y)
            optimizer.zero_grad(set_to_none=True)
            if scaler is None:
                loss.backward()
                optimizer.step()
            else:
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
            scheduler.step()
            if epoch >= warmup:
                samples += x.shape[0]
    _sync(device)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    return {"seconds": seconds, "samples": samples, "samples_per_s": samples / seconds,
            "samples_per_cpu_s": samples / cpu_seconds}


def bench_overhead(setting: list[str], tmp: Path, warmup: int, epochs: int, reps: int, predecode: bool) -> dict:
    cfg = compose([*COMMON, *setting, *NO_EVAL, f"trainer.max_epochs={warmup + epochs}"], tmp / "overhead")
    framework, plain = [], []
    for rep in range(reps):  # alternate, so slow phases of a noisy machine hit both alike
        first, second = (framework, plain) if rep % 2 == 0 else (plain, framework)
        for results in (first, second):
            if results is framework:
                framework.append(framework_epochs(cfg, tmp / f"overhead{rep}", warmup, predecode))
            else:
                plain.append(plain_epochs(cfg, warmup, predecode))
    fw = statistics.median(r["samples_per_s"] for r in framework)
    pn = statistics.median(r["samples_per_s"] for r in plain)
    # Each repetition's two runs are adjacent in time, so they share the machine's load of the
    # moment; the median of these paired ratios survives a change of load between repetitions.
    ratio = statistics.median(f["samples_per_s"] / p["samples_per_s"] for f, p in zip(framework, plain))
    return {
        "setting": {"model": cfg.model.name, "data": cfg.data.name, "input_size": cfg.data.input_size,
                    "batch_size": cfg.data.batch_size, "num_workers": cfg.data.num_workers,
                    "optimizer": cfg.optimizer.name, "scheduler": cfg.scheduler.name,
                    "precision": str(cfg.trainer.precision), "augment": bool(cfg.data.augment.enabled),
                    "predecoded": predecode, "warmup_epochs": warmup, "timed_epochs": epochs, "repetitions": reps},
        "framework_samples_per_s": round(fw, 2), "plain_samples_per_s": round(pn, 2),
        "framework_runs_samples_per_s": [round(r["samples_per_s"], 2) for r in framework],
        "plain_runs_samples_per_s": [round(r["samples_per_s"], 2) for r in plain],
        "ratio": round(ratio, 4), "ratio_of_medians": round(fw / pn, 4),
        # Noise only ever slows a run down, so the fastest runs are a second, less noisy estimate.
        "ratio_of_best_runs": round(max(r["samples_per_s"] for r in framework) /
                                    max(r["samples_per_s"] for r in plain), 4),
        # Samples per second of this process's own CPU time: what other processes take from the
        # cores does not count. Comparable only when nothing runs on a GPU or in loader workers.
        "cpu_time_ratio": round(statistics.median(r["samples_per_cpu_s"] for r in framework) /
                                statistics.median(r["samples_per_cpu_s"] for r in plain), 4),
        "target": OVERHEAD_TARGET, "pass": ratio >= OVERHEAD_TARGET,
    }


# --- 2. cached vs uncached linear probe ---------------------------------------------------------

def probe_run(setting: list[str], run_dir: Path, epochs: int, cache: bool, feature_cache: Path) -> dict:
    cfg = compose([*COMMON, *setting, "strategy=linear_probe", "data.augment.enabled=false",
                   f"strategy.cache_features={str(cache).lower()}", f"trainer.max_epochs={epochs}",
                   f"paths.feature_cache={feature_cache}"], run_dir)
    timer = EpochTimer()
    metrics = run.train(cfg, callbacks=[timer])
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
    cfg = compose([*COMMON, *setting], tmp / "probe_cfg")
    ratio = uncached["fit_seconds"] / shared["fit_seconds"]
    return {
        "setting": {"model": cfg.model.name, "data": cfg.data.name, "input_size": cfg.data.input_size,
                    "batch_size": cfg.data.batch_size, "epochs": epochs, "augment": False},
        "uncached": uncached, "cached_first_run": first, "cached": shared,
        "ratio": round(ratio, 3),
        "ratio_first_run": round(uncached["fit_seconds"] / first["fit_seconds"], 3),
        "steady_epoch_ratio": round(uncached["steady_epoch_seconds"] / max(1e-9, shared["steady_epoch_seconds"]), 2),
        # The first cached run runs the backbone over train and val once (the extraction, about one
        # uncached epoch), so its ratio stays below the epoch count whatever the model.
        "ratio_first_run_upper_bound": epochs,
        "extraction_seconds": round(max(0.0, first["outside_epochs_seconds"] - shared["outside_epochs_seconds"]), 3),
        "test_acc_difference": max(abs(uncached["test_acc"] - r["test_acc"]) for r in (first, shared)),
        "target": CACHE_TARGET, "pass": ratio >= CACHE_TARGET,
    }


# --- 3. data loading alone ----------------------------------------------------------------------

def bench_loading(setting: list[str], tmp: Path, epochs: int, workers=(0, 1, 2)) -> dict:
    rows = []
    for w in workers:
        cfg = compose([*COMMON, *setting, "strategy=finetune", f"data.num_workers={w}"], tmp / "loading")
        _, _, datamodule, _ = _build(cfg, predecode=False)
        loader = datamodule.train_dataloader().iterables["data"]
        for _ in loader:  # warm-up pass: starts the (persistent) workers
            pass
        n, start = 0, time.perf_counter()
        for _ in range(epochs):
            for x, _labels in loader:
                n += x.shape[0]
        seconds = time.perf_counter() - start
        rate = n / seconds
        # num_workers=0 loads in the training process itself: one loading process.
        rows.append({"num_workers": w, "images_per_s": round(rate, 1),
                     "images_per_s_per_worker": round(rate / max(1, w), 1)})
        del loader, datamodule
    return {"setting": {"data": cfg.data.name, "input_size": cfg.data.input_size, "batch_size": cfg.data.batch_size,
                        "augment": bool(cfg.data.augment.enabled), "epochs": epochs},
            "rows": rows}


def loading_share(training_samples_per_s: float, loading: dict) -> float:
    """Share of a training step spent loading when the training process loads itself (num_workers=0)."""
    in_process = next(r for r in loading["rows"] if r["num_workers"] == 0)["images_per_s"]
    return round(training_samples_per_s / in_process, 4)


# --- 4. GPU: large models, bf16 + channels_last, fraction of peak ------------------------------

def peak_flops(device_name: str) -> float | None:
    return next((v for k, v in PEAK_BF16_FLOPS if k.lower() in device_name.lower()), None)


def gpu_model_bench(model_group: str, device: torch.device, batch: int, warmup: int, steps: int,
                    peak: float | None) -> dict:
    from torch.utils.flop_counter import FlopCounterMode

    cfg = compose_config(["model=" + model_group, "model.pretrained=false", "source=none", "logger=none"])
    task = Task(name="main", num_classes=1000)
    pl.seed_everything(0, verbose=False)
    model = create_model(cfg.model, [task]).to(device).to(memory_format=torch.channels_last).train()
    optimizer = create_optimizer(model, cfg.optimizer)
    x = torch.randn(batch, 3, 224, 224, device=device).to(memory_format=torch.channels_last)
    y = torch.randint(0, 1000, (batch,), device=device)

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = F.cross_entropy(model(x)["main"], y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    with FlopCounterMode(display=False) as counter:  # forward + backward FLOPs of one step
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = F.cross_entropy(model(x)["main"], y)
        loss.backward()
    optimizer.zero_grad(set_to_none=True)
    flops = counter.get_total_flops()
    for _ in range(warmup):
        step()
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    seconds = time.perf_counter() - start
    achieved = flops * steps / seconds
    return {"model": cfg.model.name, "batch_size": batch, "images_per_s": round(batch * steps / seconds, 1),
            "gflops_per_image": round(flops / batch / 1e9, 3), "achieved_tflops": round(achieved / 1e12, 2),
            "peak_fraction": None if peak is None else round(achieved / peak, 4)}


def bench_gpu(quick: bool) -> dict:
    if not torch.cuda.is_available():
        return {"available": False, "note": "no GPU"}
    device = torch.device("cuda")
    name = torch.cuda.get_device_name(device)
    peak = peak_flops(name)
    torch.backends.cudnn.benchmark = True
    rows = [gpu_model_bench(group, device, batch=128 if quick else 256, warmup=3 if quick else 15,
                            steps=5 if quick else 50, peak=peak) for group in ("resnet50", "vit_small")]
    return {"available": True, "device": name, "peak_bf16_tflops": None if peak is None else peak / 1e12,
            "precision": "bf16 autocast", "memory_format": "channels_last", "rows": rows}


# --- report ---------------------------------------------------------------------------------------

def _environment(threads: int) -> dict:
    import timm

    return {"python": platform.python_version(), "torch": torch.__version__, "pytorch_lightning": pl.__version__,
            "timm": timm.__version__, "cpu_count": os.cpu_count(), "torch_threads": threads,
            "torch_threads_after": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
            "load_average_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None}


def print_tables(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if not console.is_terminal:  # piped or captured: do not squeeze the table into 80 columns
        console.width = 140
    ok = {True: "[green]pass[/]", False: "[red]FAIL[/]"}
    o, p, d, g = result["overhead"], result["linear_probe"], result["data_loading"], result["gpu"]
    s = o["setting"]
    env = result["environment"]
    t = Table(title=f"transferlab bench ({'quick' if result['quick'] else 'full'}; torch threads "
                    f"{env['torch_threads']}, load avg {env['load_average_1min']:.1f}, {result['seconds']:.0f} s)")
    for col in ("measurement", "value", "target", ""):
        t.add_column(col)
    t.add_row(f"training samples/s, tl-train module + Trainer\n  {s['model']} {s['input_size']}px batch "
              f"{s['batch_size']}, {s['data']}, {s['optimizer']}+{s['scheduler']}, {s['precision']}, "
              f"median of {s['repetitions']} x {s['timed_epochs']} epochs",
              f"{o['framework_samples_per_s']:.1f}", "", "")
    t.add_row("training samples/s, plain PyTorch loop (same work)", f"{o['plain_samples_per_s']:.1f}", "", "")
    t.add_row("  framework / plain (median of per-repetition ratios)", f"{o['ratio']:.3f}", f">= {o['target']}",
              ok[o["pass"]])
    spread = lambda runs: f"{min(runs):.0f}-{max(runs):.0f}"  # noqa: E731
    t.add_row("  runs: framework / plain samples/s (best-run ratio)",
              f"{spread(o['framework_runs_samples_per_s'])} / {spread(o['plain_runs_samples_per_s'])} "
              f"({o['ratio_of_best_runs']:.3f})", "", "")
    if not s["predecoded"] and s["num_workers"] == 0 and not result["gpu"]["available"]:
        t.add_row("  framework / plain per CPU-second of this process (robust to other load)",
                  f"{o['cpu_time_ratio']:.3f}", "", "")
    ps = p["setting"]
    t.add_row(f"linear probe fit_seconds, uncached\n  {ps['model']} {ps['input_size']}px, {ps['data']}, "
              f"{ps['epochs']} epochs", f"{p['uncached']['fit_seconds']:.2f}", "", "")
    t.add_row("linear probe fit_seconds, cached features, first run (extracts them)",
              f"{p['cached_first_run']['fit_seconds']:.2f}", "", "")
    t.add_row("  uncached / cached, first run", f"{p['ratio_first_run']:.2f}",
              f"< {p['ratio_first_run_upper_bound']} (one extraction ~ one epoch)", "")
    t.add_row("linear probe fit_seconds, cached features, later run (shared feature cache)",
              f"{p['cached']['fit_seconds']:.2f}", "", "")
    t.add_row("  uncached / cached, later run", f"{p['ratio']:.2f}", f">= {p['target']}", ok[p["pass"]])
    t.add_row("  steady epoch seconds uncached / cached",
              f"{p['uncached']['steady_epoch_seconds']:.3f} / {p['cached']['steady_epoch_seconds']:.3f} "
              f"(x{p['steady_epoch_ratio']:.1f})", "", "")
    t.add_row("  extraction of train + val features (first cached run)", f"{p['extraction_seconds']:.2f} s", "", "")
    t.add_row("  test acc uncached / cached first / cached later",
              f"{p['uncached']['test_acc']:.4f} / {p['cached_first_run']['test_acc']:.4f} / "
              f"{p['cached']['test_acc']:.4f}", "within 0.005", ok[p["test_acc_difference"] <= 0.005])
    ds = d["setting"]
    for row in d["rows"]:
        t.add_row(f"data loading images/s, num_workers={row['num_workers']} ({ds['data']} {ds['input_size']}px, "
                  f"augmented)", f"{row['images_per_s']:.0f} ({row['images_per_s_per_worker']:.0f} per worker)", "", "")
    t.add_row("  loading share of a training step when loaded in-process (num_workers=0)",
              f"{100 * d['share_of_training_step_at_0_workers']:.1f}%", "", "")
    if g["available"]:
        for row in g["rows"]:
            frac = ("n/a (unknown peak)" if row["peak_fraction"] is None
                    else f"{100 * row['peak_fraction']:.1f}% of peak")
            t.add_row(f"GPU {g['device']}: {row['model']} 224px bf16 channels_last, batch {row['batch_size']}",
                      f"{row['images_per_s']:.0f} img/s, {row['achieved_tflops']:.0f} TFLOP/s, {frac}", "", "")
    else:
        t.add_row("GPU", "no GPU", "", "")
    console.print(t)


def choose_threads(requested: int | None) -> tuple[int, str]:
    """All cores, unless the machine is already busy: then one thread, because OpenMP threads that
    wait for each other at every op's barrier while other processes hold the cores run several
    times slower than a single thread and make every figure noise."""
    cores = os.cpu_count() or 1
    if requested:
        return requested, "--threads"
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    if cores > 1 and load >= cores - 0.5:
        return 1, f"1-minute load average {load:.1f} on {cores} cores: other processes compete, 1 thread is steadier"
    return cores, f"all {cores} cores (load average {load:.1f})"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny model, fewer epochs and repetitions (for tests)")
    parser.add_argument("--json", type=Path, help="also write the JSON result to this file")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads (default: all cores; 1 when the load average says the machine is busy)")
    parser.add_argument("--probe-epochs", type=int, default=None, help="linear-probe epochs (default 10; quick 3)")
    parser.add_argument("--reps", type=int, default=None, help="framework/plain repetitions (default 5; quick 1)")
    args = parser.parse_args(argv)

    threads, threads_reason = choose_threads(args.threads)
    torch.set_num_threads(threads)
    gpu = torch.cuda.is_available()
    if args.quick:
        setting, probe_setting = CPU_QUICK_SETTING, CPU_QUICK_SETTING
        warmup, epochs, reps, probe_epochs, load_epochs = 1, 1, 1, 3, 1
    else:
        setting, probe_setting = (GPU_SETTING, GPU_SETTING) if gpu else (CPU_SETTING, CPU_PROBE_SETTING)
        warmup, epochs, reps, probe_epochs, load_epochs = 1, 2, 5, 10, 2
    reps = args.reps or reps
    probe_epochs = args.probe_epochs or probe_epochs

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="transferlab-bench-") as tmp:
        tmp = Path(tmp)
        os.environ.setdefault("TRANSFERLAB_CACHE", str(tmp / "cache"))
        result = {"quick": args.quick}
        # Loading only dominates on a GPU; there both runs read the same images decoded once.
        result["overhead"] = bench_overhead(setting, tmp, warmup, epochs, reps, predecode=gpu and not args.quick)
        result["linear_probe"] = bench_probe(probe_setting, tmp, probe_epochs)
        result["data_loading"] = bench_loading(setting, tmp, load_epochs)
        result["data_loading"]["share_of_training_step_at_0_workers"] = loading_share(
            result["overhead"]["plain_samples_per_s"], result["data_loading"])
        result["gpu"] = bench_gpu(args.quick)
    result["environment"] = dict(_environment(threads), threads_reason=threads_reason)
    result["seconds"] = round(time.perf_counter() - started, 1)
    result["pass"] = result["overhead"]["pass"] and result["linear_probe"]["pass"]

    print_tables(result)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
