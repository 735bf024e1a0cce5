#!/usr/bin/env python
"""Measure transferlab's speed in one process; print a table and a JSON blob.

Runs the benchmarks of ``scripts/benchmarks`` (its docstring and each module's say what they
measure): framework vs plain loop (fine-tuning, and LoRA through peft), cached vs uncached linear probe, data loading, GPU models, and
the same framework/plain comparison on a tiny BERT with tokenisation throughput.
On a CPU it uses a small model and runs in a few minutes (``--quick``: well under a minute). The
exit code is 0 whatever the figures are (this is a measurement); the JSON holds ``"pass"`` fields.

    python scripts/bench.py [--quick] [--json PATH] [--threads N] [--probe-epochs N] [--reps N]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the benchmarks package, from any directory

from benchmarks import common  # noqa: E402 - first: sets the environment before torch loads
import torch  # noqa: E402

from benchmarks.gpu import bench_gpu  # noqa: E402
from benchmarks.loading import bench_loading, loading_share  # noqa: E402
from benchmarks.overhead import bench_overhead  # noqa: E402
from benchmarks.probe import bench_probe  # noqa: E402
from benchmarks.report import print_tables  # noqa: E402
from benchmarks.text import bench_text  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny model, fewer epochs and repetitions (for tests)")
    parser.add_argument("--json", type=Path, help="also write the JSON result to this file")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads (default: all cores; 1 when the load average says the machine is busy)")
    parser.add_argument("--probe-epochs", type=int, default=None, help="linear-probe epochs (default 10; quick 3)")
    parser.add_argument("--reps", type=int, default=None, help="framework/plain repetitions (default 5; quick 1)")
    args = parser.parse_args(argv)

    threads, threads_reason = common.choose_threads(args.threads)
    torch.set_num_threads(threads)
    gpu = torch.cuda.is_available()
    if args.quick:
        setting, probe_setting = common.CPU_QUICK_SETTING, common.CPU_QUICK_SETTING
        warmup, epochs, reps, probe_epochs, load_epochs = 1, 1, 1, 3, 1
    else:
        setting, probe_setting = ((common.GPU_SETTING, common.GPU_SETTING) if gpu
                                  else (common.CPU_SETTING, common.CPU_PROBE_SETTING))
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
        result["lora"] = bench_overhead(setting, tmp, warmup, epochs, reps, predecode=gpu and not args.quick,
                                        strategy="lora")
        result["linear_probe"] = bench_probe(probe_setting, tmp, probe_epochs)
        result["data_loading"] = bench_loading(setting, tmp, load_epochs)
        result["data_loading"]["share_of_training_step_at_0_workers"] = loading_share(
            result["overhead"]["plain_samples_per_s"], result["data_loading"])
        result["gpu"] = bench_gpu(args.quick, tmp)
        result["text"] = bench_text(tmp, warmup, epochs, reps)
    result["environment"] = dict(common.environment(threads), threads_reason=threads_reason)
    result["seconds"] = round(time.perf_counter() - started, 1)
    result["pass"] = all(result[k]["pass"] for k in ("overhead", "lora", "linear_probe", "text"))

    print_tables(result)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
