"""``format=hf``: a text model as a folder plain transformers opens (``AutoModelForSequenceClassification``,
``AutoTokenizer``, ``pipeline('text-classification')``, with ``trust_remote_code=True`` for its shipped model
code), called directly (``FORMATS.entry('hf').cls().write``) on two tiny BERT runs: mean pooling with a
linear head (tiny_bert's own) and the [CLS] state with an MLP head, the format's two code paths.
test_deploy.py exports through ``transferlab.export``; this file checks the folder itself."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import ONE_THREAD, TEXT

import transferlab

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SETTINGS = {"mean_linear": [], "cls_mlp": ["model.pooling=cls", "model.head.hidden=16", "model.head.dropout=0.3"]}
FILES = {"config.json", "model.safetensors", "modeling_transferlab.py", "tokenizer.json", "tokenizer_config.json"}


@pytest.fixture(scope="module")
def exported(tmp_path_factory, one_torch_thread):
    """Per setting: the folder, the format's check, and transferlab's token ids and probabilities on texts
    of several lengths, one of them past data.max_length (so truncation is compared too)."""
    import torch

    from transferlab import deploy
    from transferlab.data.synthetic_text import generate
    from transferlab.formats import FORMATS

    root = tmp_path_factory.mktemp("export_hf")
    texts = generate(5, "target", 0.0, 7)[0] + [" ".join(generate(12, "target", 0.0, 8)[0])]
    made = {}
    for name, extra in SETTINGS.items():
        run = transferlab.train(*TEXT, "source=none", *extra, run_dir=root / name)
        model = deploy.load(run.run_dir / "checkpoints" / "best.ckpt")
        task = model.task(None)
        folder = root / f"{name}_hf"
        folder.mkdir()
        check = FORMATS.entry("hf").cls().write(model, task, folder)
        inputs, _ = model.transform().collate([(t, {}) for t in texts])
        with torch.inference_mode():
            logits = model.network(inputs)[task.name].double()
        ids = [row[mask.bool()].tolist() for row, mask in zip(inputs["input_ids"], inputs["attention_mask"])]
        made[name] = {"folder": str(folder), "check": check, "classes": [str(c) for c in task.class_names],
                      "max_length": int(model.data.max_length), "pooling": model.family.pooling, "ids": ids,
                      "logits": logits.numpy(), "probs": logits.softmax(-1).numpy()}
    return texts, made


def test_the_folder_holds_code_weights_tokenizer_and_class_names_and_its_check_passed(exported):
    from transferlab.formats import FORMATS

    tolerance = FORMATS.entry("hf").cls.tolerance
    for name, one in exported[1].items():
        assert one["check"]["max_abs_diff"] <= tolerance <= 1e-4, name
        assert "AutoModelForSequenceClassification" in one["check"]["loaded_with"]
        folder = Path(one["folder"])
        assert FILES <= {p.name for p in folder.iterdir()}, name
        config = json.loads((folder / "config.json").read_text())
        assert config["auto_map"]["AutoModelForSequenceClassification"] == \
            "modeling_transferlab.TransferlabForSequenceClassification"
        assert [config["id2label"][str(i)] for i in range(len(one["classes"]))] == one["classes"]
        assert config["label2id"] == {c: i for i, c in enumerate(one["classes"])}
        assert config["pooling"] == one["pooling"] and config["head_hidden"] == (16 if name == "cls_mlp" else 0)
        assert json.loads((folder / "tokenizer_config.json").read_text())["model_max_length"] == one["max_length"]
        code = (folder / "modeling_transferlab.py").read_text()
        assert not re.search(r"^\s*(from|import)\s+transferlab", code, re.M), name  # torch and transformers only


# A new interpreter, because the point is that nothing of transferlab is imported to open the folder.
SCRIPT = """
import json, sys
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline
texts, folders = json.loads(sys.argv[1]), json.loads(sys.argv[2])
out = {}
ids = lambda tokens: [row[mask.bool()].tolist() for row, mask in zip(tokens['input_ids'], tokens['attention_mask'])]
for name, folder in folders.items():
    # the tokenizer's files need no code of their own: it loads without trust_remote_code as well
    plain = AutoTokenizer.from_pretrained(folder, trust_remote_code=False)(texts, truncation=True)
    tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
    tokens = tokenizer(texts, padding=True, truncation=True, return_tensors='pt')
    model = AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=True).eval()
    with torch.inference_mode():
        logits, loss = model(**tokens).logits, model(**tokens, labels=torch.zeros(len(texts), dtype=torch.long)).loss
    classify = pipeline('text-classification', model=folder, trust_remote_code=True, top_k=None, device='cpu')
    out[name] = {'ids': ids(tokens), 'plain_ids': [list(x) for x in plain['input_ids']], 'logits': logits.tolist(),
                 'loss': float(loss), 'labels': model.config.id2label, 'model_max_length': tokenizer.model_max_length,
                 'pipeline': [{s['label']: s['score'] for s in one} for one in classify(texts, truncation=True)]}
out['transferlab'] = sorted(m for m in sys.modules if m.split('.')[0] == 'transferlab')
print('\\n' + json.dumps(out))
"""


def test_plain_transformers_opens_the_folder_with_transferlabs_tokens_labels_and_probabilities(exported, tmp_path):
    texts, made = exported
    folders = {name: one["folder"] for name, one in made.items()}
    done = subprocess.run([sys.executable, "-c", SCRIPT, json.dumps(texts), json.dumps(folders)], capture_output=True,
                          text=True, timeout=120, stdin=subprocess.DEVNULL,
                          env={**ONE_THREAD, "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1",
                               "HF_HOME": str(tmp_path / "hf_home")})  # the remote code is cached under HF_HOME
    assert done.returncode == 0, done.stderr[-3000:]
    opened = json.loads(done.stdout.strip().splitlines()[-1])
    assert opened.pop("transferlab") == []
    for name, one in made.items():
        theirs = opened[name]
        assert theirs["ids"] == theirs["plain_ids"] == one["ids"], name  # the run's tokenizer, cut where the run cut
        assert max(map(len, one["ids"])) == one["max_length"] == theirs["model_max_length"]
        assert list(theirs["labels"].values()) == one["classes"]
        logits = np.asarray(theirs["logits"], dtype=np.float64)
        assert np.all(np.abs(logits - one["logits"]) <= 1e-5 * np.maximum(1.0, np.abs(one["logits"]))), name
        probs = np.exp(logits - logits.max(-1, keepdims=True))
        assert np.abs(probs / probs.sum(-1, keepdims=True) - one["probs"]).max() < 1e-5, name
        for n, scores in enumerate(theirs["pipeline"]):  # class names, softmax probabilities
            assert sorted(scores) == sorted(one["classes"]), name
            assert max(abs(scores[c] - one["probs"][n, j]) for j, c in enumerate(one["classes"])) < 1e-5, name
        cross_entropy = -np.log(one["probs"][:, 0]).mean()  # labels given: the loss is cross-entropy
        assert theirs["loss"] == pytest.approx(cross_entropy, rel=1e-5), name
