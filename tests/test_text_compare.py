"""The offline text default transfers: fine-tuning the tiny BERT pretrained by masked-language modelling
on the source corpus beats training it from scratch on the few-shot target (experiment=text_compare's own
settings, its own 50-epoch source run). The tokenizer is deterministic (models/wordpiece.py), so a fresh
cache pretrains the same source as the README's measurement did."""
from __future__ import annotations

import json
import statistics

import pytest
from helpers import cli

pytestmark = pytest.mark.slow  # the MLM source run (~2 CPU-minutes) and 4 few-shot target runs


def test_mlm_transfer_is_not_worse_than_scratch(tmp_path):
    result = cli("tl-train", "experiment=text_compare", "logger=csv", "strategy=finetune,scratch", "seed=1,2",
                 f"hydra.sweep.dir={tmp_path / 'sweep'}", f"paths.cache_dir={tmp_path / 'cache'}", cwd=tmp_path,
                 env={"OMP_NUM_THREADS": "1"}, timeout=1500)
    assert result.returncode == 0, result.stderr[-2000:]
    acc: dict[str, list[float]] = {}
    for metrics in (tmp_path / "sweep").rglob("metrics.json"):
        m = json.loads(metrics.read_text())
        acc.setdefault(m["strategy"], []).append(m["test/acc"])
    assert sorted(acc) == ["finetune", "scratch"] and all(len(v) == 2 for v in acc.values()), acc
    assert statistics.mean(acc["finetune"]) > statistics.mean(acc["scratch"]), acc
