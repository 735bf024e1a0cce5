"""Bad text input, as a user types it: each case ``tl-train``'s ``main()`` in this process (``helpers.cli``),
which must exit non-zero with one ``error:`` paragraph naming the bad value, no traceback and no
metrics.json (that such an exit reaches the shell as a process's status is tests/test_console.py's).

The cases run up front and each test checks one result.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import cli

pytestmark = pytest.mark.slow

BASE = ["model=tiny_bert",
        "model.tokenizer.train_on=['data=synthetic_text','data.domain=source','data.num_samples=200']",
        "source=none", "logger=csv", "trainer.max_epochs=1", "trainer.enable_progress_bar=false",
        "data=text_files", "data.path={f}/good.csv", "data.text_column=review", "tasks.main.column=topic"]

CASES = {  # name -> (overrides after BASE (a data= one drops its data keys), words stderr must contain)
    "unknown_model_name": (["model=bert_base", "model.name=bert-bas-uncased", "model.tokenizer.train_on=null"],
                           ["bert-bas-uncased", "did you mean", "bert-base-uncased"]),
    "text_column_missing": (["data.text_column=body"], ["data.text_column='body'", "review, topic"]),
    "empty_file": (["data.path={f}/empty.csv"], ["{f}/empty.csv", "empty"]),
    "not_utf8": (["data.path={f}/latin1.csv"], ["{f}/latin1.csv", "line 3", "UTF-8"]),
    "empty_text": (["data.path={f}/empty_text.jsonl"], ["{f}/empty_text.jsonl: line 2", "empty"]),
    "label_outside_classes": (["data.classes=[food,politics,science]"], ["{f}/good.csv: line", "sports",
                                                                          "data.classes"]),
    "max_length_zero": (["data.max_length=0"], ["data.max_length=0", "an integer >= 3"]),
    "max_length_above_model": (["data.max_length=512"], ["data.max_length=512", "3..128"]),
    "tokenizer_vocab_mismatch": (["model.config.vocab_size=64", "model.tokenizer.vocab_size=1024"],
                                 ["tokens but the model's vocabulary has 64"]),
    "image_setting_for_text": (["+model.channels_last=true"], ["model.channels_last", "text models"]),
    "image_data_for_text_model": (["data=digits", "tasks.main.column=label"],
                                  ["data.kind=digits", "not a text dataset"]),
}


def make_files(f: Path) -> None:
    from transferlab.data.synthetic_text import TOPICS, generate

    texts, topics, _ = generate(40, "target", 0.5, 0)
    rows = ["review,topic"] + [f"{t.replace(',', ' ')},{TOPICS[y]}" for t, y in zip(texts, topics)]
    (f / "good.csv").write_text("\n".join(rows) + "\n")
    (f / "empty.csv").write_text("")
    (f / "latin1.csv").write_bytes("review,topic\nfine text,food\ncaf\u00e9 au lait,food\n".encode("latin-1"))
    (f / "empty_text.jsonl").write_text(json.dumps({"review": "a text", "topic": "food"}) + "\n"
                                        + json.dumps({"review": "  ", "topic": "food"}) + "\n")


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    f = tmp_path_factory.mktemp("text_bad_input")
    make_files(f)

    def run(name):
        overrides, _ = CASES[name]
        other_data = any(o.startswith("data=") for o in overrides)  # then BASE's text_files keys do not apply
        base = [a for a in BASE if not (other_data and a.startswith(("data=", "data.")))]
        args = [a.format(f=f) for a in base + overrides] + [f"paths.run_dir={f / name}"]
        return cli("tl-train", *args, cwd=f, env={"OMP_NUM_THREADS": "1"})

    return f, {name: run(name) for name in CASES}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_text_input_is_one_clear_error(results, name):
    f, done = results
    result = done[name]
    assert result.returncode != 0, result.stdout[-1000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    assert "error:" in result.stderr
    for word in CASES[name][1]:
        assert word.format(f=f) in result.stderr, (word, result.stderr[-2000:])
    assert not (f / name / "metrics.json").exists()
