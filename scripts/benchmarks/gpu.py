"""GPU (only when CUDA is available): resnet50 and vit_small at 224 px, bf16 autocast +
channels_last, images/s for forward+backward+optimizer step, and the fraction of the GPU's peak
dense bf16 FLOP/s achieved (FLOPs counted with ``torch.utils.flop_counter.FlopCounterMode``).
"""
from __future__ import annotations

import time
from pathlib import Path

import pytorch_lightning as pl
import torch
import torch.nn.functional as F

from transferlab.models import create_model
from transferlab.optim import create_optimizer
from transferlab.tasks import Task

from .common import compose, peak_flops, sync


def gpu_model_bench(model_group: str, tmp: Path, device: torch.device, batch: int, warmup: int, steps: int,
                    peak: float | None) -> dict:
    from torch.utils.flop_counter import FlopCounterMode

    plan = compose(["model=" + model_group, "model.pretrained=false", "source=none", "logger=none"], tmp / "gpu")
    task = Task(name="main", num_classes=1000)
    pl.seed_everything(0, verbose=False)
    model = create_model(plan.model, [task]).to(device).to(memory_format=torch.channels_last).train()
    optimizer = create_optimizer(model, plan.optimizer)
    inputs = {"pixel_values": torch.randn(batch, 3, 224, 224, device=device).to(memory_format=torch.channels_last)}
    y = torch.randint(0, 1000, (batch,), device=device)

    def loss_backward():
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = F.cross_entropy(model(inputs)[task.name], y)
        loss.backward()

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss_backward()
        optimizer.step()

    with FlopCounterMode(display=False) as counter:  # forward + backward FLOPs of one step
        loss_backward()
    optimizer.zero_grad(set_to_none=True)
    flops = counter.get_total_flops()
    for _ in range(warmup):
        step()
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    seconds = time.perf_counter() - start
    achieved = flops * steps / seconds
    return {"model": plan.model.name, "batch_size": batch, "images_per_s": round(batch * steps / seconds, 1),
            "gflops_per_image": round(flops / batch / 1e9, 3), "achieved_tflops": round(achieved / 1e12, 2),
            "peak_fraction": None if peak is None else round(achieved / peak, 4)}


def bench_gpu(quick: bool, tmp: Path) -> dict:
    if not torch.cuda.is_available():
        return {"available": False, "note": "no GPU"}
    device = torch.device("cuda")
    name = torch.cuda.get_device_name(device)
    peak = peak_flops(name)
    torch.backends.cudnn.benchmark = True
    rows = [gpu_model_bench(group, tmp, device, batch=128 if quick else 256, warmup=3 if quick else 15,
                            steps=5 if quick else 50, peak=peak) for group in ("resnet50", "vit_small")]
    return {"available": True, "device": name, "peak_bf16_tflops": None if peak is None else peak / 1e12,
            "precision": "bf16 autocast", "memory_format": "channels_last", "rows": rows}
