"""scripts/bench.py runs end to end and reports every figure; the thresholds are not asserted here
(timings depend on the machine and its load, so they belong in the benchmark's output, not in a test)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from helpers import REPO


def _positive(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0


@pytest.mark.slow
def test_bench_quick_reports_all_figures(tmp_path):
    """As a user runs it, ``python scripts/bench.py`` in a process of its own: the script sets the process's
    thread count for its timings, and its exit status and printed table are what is checked."""
    out = tmp_path / "out.json"
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "bench.py"), "--quick", "--json", str(out)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300, env=dict(os.environ))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "framework / plain" in proc.stdout  # the table
    result = json.loads(out.read_text())
    assert result["quick"] is True and isinstance(result["pass"], bool)

    for name in ("overhead", "lora"):  # fine-tuning, and the same comparison with peft's adapters
        overhead = result[name]
        for key in ("framework_samples_per_s", "plain_samples_per_s", "ratio"):
            assert _positive(overhead[key]), (name, key, overhead)
        assert isinstance(overhead["pass"], bool) and overhead["target"] == 0.95
    assert result["lora"]["setting"]["strategy"] == "lora"

    probe = result["linear_probe"]
    for run in ("uncached", "cached_first_run", "cached"):
        assert _positive(probe[run]["fit_seconds"]), probe
        assert 0 <= probe[run]["test_acc"] <= 1
    assert _positive(probe["ratio"]) and _positive(probe["ratio_first_run"])
    assert isinstance(probe["pass"], bool) and probe["target"] == 10
    assert probe["test_acc_difference"] <= 0.005  # caching must not change the result

    rows = result["data_loading"]["rows"]
    assert [r["num_workers"] for r in rows] == [0, 1, 2]
    assert all(_positive(r["images_per_s"]) and _positive(r["images_per_s_per_worker"]) for r in rows)

    gpu = result["gpu"]
    if gpu["available"]:
        assert all(_positive(r["images_per_s"]) and _positive(r["achieved_tflops"]) for r in gpu["rows"])
    else:
        assert gpu["note"] == "no GPU"
    assert _positive(result["environment"]["torch_threads"])
