"""Framework overhead: training throughput (samples/s) of tl-train's module + Trainer against a
plain PyTorch loop doing the same work (same ``create_model``, the same DataLoader and transform
taken from the DataModule, the same ``create_optimizer`` / ``create_scheduler`` stepped per batch,
cross-entropy, same precision; with ``strategy=lora`` both inject the same peft adapters). Steady state: a warm-up epoch, then timed epochs; framework and
plain runs alternate, and the ratio is the median over repetitions of framework / plain (each pair
adjacent in time). Also reported: the ratio per CPU-second of this process, which other processes
on a shared machine cannot skew. Target: ratio >= 0.95.
"""
from __future__ import annotations

import statistics
import time
from contextlib import nullcontext
from pathlib import Path

import pytorch_lightning as pl
import torch
import torch.nn.functional as F

from transferlab import run
from transferlab.callbacks import ApplyStrategy
from transferlab.data import batch_size
from transferlab.models import create_model
from transferlab.optim import create_optimizer, create_scheduler

from .common import COMMON, NO_EVAL, EpochTimer, build, compose, sync, throughput, train_loader

TARGET = 0.95  # framework samples/s / plain-loop samples/s


class Predecoded(torch.utils.data.Dataset):
    """Every item of a dataset decoded and transformed once (a fixed augmentation draw), served from memory."""

    def __init__(self, dataset):
        items = [dataset[i] for i in range(len(dataset))]
        self.inputs = {key: torch.stack([inputs[key] for inputs, _ in items]) for key in items[0][0]}
        self.labels = [labels for _, labels in items]

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return {key: values[i] for key, values in self.inputs.items()}, self.labels[i]


def _parts(plan, predecode: bool) -> run.Parts:
    parts = build(plan)
    if predecode:
        key = ("data", "train")
        parts.datamodule.datasets[key] = Predecoded(parts.datamodule.datasets[key])
    return parts


def framework_epochs(plan, run_dir: Path, warmup: int, predecode: bool) -> dict:
    """tl-train's module, strategy callback and Trainer (``run.build`` + ``run.create_trainer``)."""
    module, datamodule, _ = _parts(plan, predecode)
    timer = EpochTimer(warmup)
    trainer = run.create_trainer(plan, run_dir, [ApplyStrategy(plan.strategy), timer], loggers=[])
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


def plain_epochs(plan, warmup: int, predecode: bool) -> dict:
    """The same work by hand: same model factory, DataLoader, optimizer, schedule, loss and precision."""
    module, datamodule, _ = _parts(plan, predecode)
    strategy, tasks = plan.strategy, module.tasks
    del module  # the framework's own copy; the plain loop builds its model with the same factory and seed
    pl.seed_everything(plan.seed, workers=True, verbose=False)
    model = create_model(plan.model, tasks)
    strategy.prepare(model)  # LoRA / (IA)³: the same peft adapters, injected the same way
    strategy.apply(model, 0)  # what trains (all of it for finetune; the adapters and heads for LoRA)
    device = torch.device("cuda" if torch.cuda.is_available() and plan.trainer["accelerator"] in ("auto", "gpu", "cuda")
                          else "cpu")
    model.to(device).train()
    loader = train_loader(datamodule)
    epochs = plan.trainer["max_epochs"]
    optimizer = create_optimizer(model, plan.optimizer,
                                 stage_lr_scale=lambda stage: strategy.lr_scale(stage, model.num_stages),
                                 own=strategy.own_group())
    total = len(loader) * epochs
    scheduler = create_scheduler(optimizer, plan.scheduler, total_steps=total,
                                 steps_per_epoch=max(1, total // epochs))["scheduler"]
    scaler = torch.amp.GradScaler(device.type) if str(plan.trainer["precision"]).startswith("16") else None
    autocast = _autocast(plan.trainer["precision"], device)
    task = tasks[0]
    samples, start = 0, None
    for epoch in range(epochs):
        if epoch == warmup:
            sync(device)
            start, cpu_start = time.perf_counter(), time.process_time()
        for inputs, labels in loader:
            inputs = {k: v.to(device, non_blocking=True) for k, v in inputs.items()}
            y = labels[task.column].to(device, non_blocking=True)
            with autocast():
                loss = F.cross_entropy(model(inputs)[task.name], y)
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
                samples += batch_size(inputs)
    sync(device)
    return throughput(samples, time.perf_counter() - start, time.process_time() - cpu_start)


def bench_overhead(setting: list[str], tmp: Path, warmup: int, epochs: int, reps: int, predecode: bool,
                   strategy: str = "finetune") -> dict:
    """``strategy=lora``: the same comparison with peft's adapters in both (the LoRA row)."""
    plan = compose([*COMMON, *setting, *NO_EVAL, f"strategy={strategy}", f"trainer.max_epochs={warmup + epochs}"],
                   tmp / f"overhead_{strategy}")
    framework, plain = [], []
    for rep in range(reps):  # alternate, so slow phases of a noisy machine hit both alike
        first, second = (framework, plain) if rep % 2 == 0 else (plain, framework)
        for results in (first, second):
            if results is framework:
                framework.append(framework_epochs(plan, tmp / f"overhead_{strategy}{rep}", warmup, predecode))
            else:
                plain.append(plain_epochs(plan, warmup, predecode))
    fw = statistics.median(r["samples_per_s"] for r in framework)
    pn = statistics.median(r["samples_per_s"] for r in plain)
    # Each repetition's two runs are adjacent in time, so they share the machine's load of the
    # moment; the median of these paired ratios survives a change of load between repetitions.
    ratio = statistics.median(f["samples_per_s"] / p["samples_per_s"] for f, p in zip(framework, plain))
    return {
        "setting": {"strategy": plan.strategy.label, "model": plan.model.name, "data": plan.data.label, "input_size": getattr(plan.data, "input_size", None),
                    "batch_size": plan.data.batch_size, "num_workers": plan.data.num_workers,
                    "optimizer": plan.optimizer.kind, "scheduler": plan.scheduler.kind,
                    "precision": str(plan.trainer["precision"]), "augment": bool(plan.data.augment.enabled),
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
        "target": TARGET, "pass": ratio >= TARGET,
    }
