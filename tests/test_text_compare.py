"""The offline text default transfers: fine-tuning the MLM-pretrained tiny BERT is not worse than
training it from scratch on the few-shot target (experiment=text_compare's own settings)."""
from __future__ import annotations

import json
import statistics

import pytest
from conftest import cli

pytestmark = pytest.mark.slow  # the MLM source run (~1.5 CPU-minutes) and 4 target runs


def test_mlm_transfer_is_not_worse_than_scratch(tmp_path):
    result = cli("tl-train", "experiment=text_compare", "logger=csv", "strategy=finetune,scratch", "seed=1,2",
                 f"hydra.sweep.dir={tmp_path}", cwd=tmp_path, env={"OMP_NUM_THREADS": "1"}, timeout=1200)
    assert result.returncode == 0, result.stderr[-2000:]
    acc = {}
    for metrics in tmp_path.rglob("metrics.json"):
        m = json.loads(metrics.read_text())
        acc.setdefault(m["strategy"], []).append(m["test/acc"])
    assert sorted(acc) == ["finetune", "scratch"] and all(len(v) == 2 for v in acc.values())
    assert statistics.mean(acc["finetune"]) >= statistics.mean(acc["scratch"]), acc
