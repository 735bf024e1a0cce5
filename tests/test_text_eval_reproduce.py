"""``tl-eval`` of a text checkpoint and ``tl-reproduce`` of a text run, through the real console scripts.

The run is an lp_ft transfer of the MLM-pretrained tiny BERT of tests/test_text.py (source run and
tokenizer from the session's cache), trained in this process with one thread: tl-train's code path,
so the console scripts (one thread too) must give the very same numbers on CPU.
"""
from __future__ import annotations

import json

import pytest
from helpers import ONE_THREAD, cli, torch_threads

from transferlab.cli.reproduce import COMPARED

pytestmark = pytest.mark.slow  # each console script starts torch, transformers and Lightning (~20 s on 2 busy cores)


@pytest.fixture(scope="module")
def text_run(tmp_path_factory):
    from helpers import text_run as train

    run_dir = tmp_path_factory.mktemp("text_original") / "run"
    with torch_threads(1):
        train(run_dir, "strategy=lp_ft", "strategy.lp_epochs=1", "data.augment.enabled=true")
    return run_dir


def test_tl_eval_of_a_text_checkpoint_gives_the_runs_test_metrics(text_run, tmp_path):
    result = cli("tl-eval", f"ckpt_path={text_run / 'checkpoints' / 'best.ckpt'}", f"hydra.run.dir={tmp_path / 'eval'}",
                 cwd=tmp_path, env=ONE_THREAD)
    assert result.returncode == 0, result.stderr[-3000:]
    trained = json.loads((text_run / "metrics.json").read_text())
    evaluated = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    for key in ("test/acc", "test/f1", "test/loss"):
        assert evaluated[key] == pytest.approx(trained[key], abs=1e-6), key


def test_tl_reproduce_of_a_text_run_matches_exactly(text_run, tmp_path):
    result = cli("tl-reproduce", str(text_run), "--out", str(tmp_path / "again"), cwd=tmp_path, env=ONE_THREAD)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert "reproduced: every metric matches" in result.stdout
    old, new = (json.loads((d / "metrics.json").read_text()) for d in (text_run, tmp_path / "again"))
    assert [k for k in COMPARED if k in old and new[k] != old[k]] == []
    assert "test/acc" in COMPARED and new["model"] == "tiny_bert" and new["data"] == "synthetic_text"
