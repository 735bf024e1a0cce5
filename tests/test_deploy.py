"""Deploy: ``tl-predict`` on new inputs and ``tl-export`` to the formats other tools open (timm, ONNX,
safetensors; the hf format has its own file), on image runs of the default digits transfer trained here."""
from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import FAST, cli

import transferlab
from transferlab.errors import CheckpointError, ConfigError, DataError

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("deploy")


@pytest.fixture(scope="module")
def runs(root):
    """Two fine-tunings of the default transfer (seeds 1, 2) and the ensemble of both."""
    made = [transferlab.train(*FAST, "source=none", f"seed={s}", run_dir=root / f"run{s}").run_dir for s in (1, 2)]
    ensemble = transferlab.fuse("method=ensemble", f"runs=[{made[0]},{made[1]}]", "logger.wandb=null",
                                run_dir=root / "ensemble").run_dir
    return {"ckpt": made[0] / "checkpoints" / "best.ckpt", "other": made[1] / "checkpoints" / "best.ckpt",
            "ensemble": ensemble}


@pytest.fixture(scope="module")
def images(root):
    """The digits 5-9 (the runs' classes) as PNG files in class folders: root/{train,val,test}/<class>/."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    folder = root / "images"
    for n, (x, y) in enumerate(zip(digits.images[:120], digits.target[:120])):
        if y >= 5:
            for split in ("train", "val", "test"):
                (folder / split / str(y)).mkdir(parents=True, exist_ok=True)
                Image.fromarray((x * 255 / 16).astype(np.uint8)).save(folder / split / str(y) / f"{n}.png")
    return folder


def rows(folder: Path, name: str = "predictions.csv") -> list[dict]:
    with open(folder / name, newline="") as f:
        return list(csv.DictReader(f))


def probabilities(table: list[dict], classes) -> dict[str, np.ndarray]:
    return {r["input"]: np.array([float(r[f"main.prob.{c}"]) for c in classes]) for r in table if not r["error"]}


CLASSES = ["5", "6", "7", "8", "9"]


def with_broken(images: Path, tmp_path: Path) -> Path:
    """The test images and one more file in a class folder that is not an image."""
    import shutil

    folder = shutil.copytree(images / "test", tmp_path / "test")
    (folder / "7" / "broken.png").write_bytes(b"not a png at all")
    return folder


def test_predictions_on_a_labelled_folder_give_tl_evals_metrics_and_a_broken_image_is_a_row(runs, images, tmp_path):
    evaluated = transferlab.evaluate(runs["ckpt"], "data=image_folder", f"data.root={images}", "data.input_size=32",
                                     "logger=csv", run_dir=tmp_path / "eval").metrics
    summary = transferlab.predict(f"ckpt_path={runs['ckpt']}", f"inputs={with_broken(images, tmp_path)}", "progress=false",
                                  "probabilities=true", "top_k=3", run_dir=tmp_path / "predict").metrics
    table = rows(tmp_path / "predict")
    broken = [r for r in table if r["input"].endswith("broken.png")]
    assert summary["failed"] == 1 and summary["predicted"] == summary["inputs"] - 1 == len(table) - 1
    assert broken[0]["error"].startswith("UnidentifiedImageError") and broken[0]["main"] == ""
    for metric in ("acc", "f1", "precision", "recall"):  # torchmetrics' float32 against float64 counts
        assert summary[f"predict/{metric}"] == pytest.approx(evaluated[f"test/{metric}"], abs=1e-6)
    good = [r for r in table if not r["error"]]
    assert all(r["main"] in CLASSES and json.loads(r["main.top_k"])[0] == r["main"] for r in good)
    assert all(len(json.loads(r["main.top_k_probs"])) == 3 for r in good)
    assert all(abs(sum(probabilities([r], CLASSES)[r["input"]]) - 1) < 1e-6 for r in good)
    on = {r["input"]: r["main"] for r in good}
    assert len(set(on.values())) > 1  # not one class for everything


def test_on_error_fail_stops_at_the_broken_image_and_nothing_readable_exits_non_zero(runs, images, tmp_path):
    with pytest.raises(DataError, match="broken.png.*on_error=row"):
        transferlab.predict(f"ckpt_path={runs['ckpt']}", f"inputs={with_broken(images, tmp_path)}", "on_error=fail",
                            "progress=false", run_dir=tmp_path / "fail")
    only_broken = tmp_path / "broken"
    only_broken.mkdir()
    (only_broken / "a.png").write_bytes(b"nothing")
    result = cli("tl-predict", f"ckpt_path={runs['ckpt']}", f"inputs={only_broken}", "progress=false",
                 f"hydra.run.dir={tmp_path / 'none'}", cwd=tmp_path)
    assert result.returncode != 0 and "none of the 1 inputs could be read" in result.stderr
    assert rows(tmp_path / "none")[0]["error"]  # the row with its error is there to read


def test_an_ensemble_predicts_its_members_probabilities_averaged(runs, images, tmp_path):
    members = [probabilities(rows(transferlab.predict(f"ckpt_path={runs[k]}", f"inputs={images / 'val'}",
                                                      "progress=false", "probabilities=true",
                                                      run_dir=tmp_path / k).run_dir), CLASSES) for k in ("ckpt", "other")]
    ensemble = probabilities(rows(transferlab.predict(f"fusion={runs['ensemble']}", f"inputs={images / 'val'}",
                                                      "progress=false", "probabilities=true",
                                                      run_dir=tmp_path / "ensemble").run_dir), CLASSES)
    assert ensemble.keys() == members[0].keys()
    worst = max(np.abs(ensemble[k] - (members[0][k] + members[1][k]) / 2).max() for k in ensemble)
    assert worst < 1e-5  # float32 log-softmax and logsumexp, averaged


def test_a_timm_export_opens_in_plain_timm_with_tl_predicts_probabilities(runs, images, tmp_path):
    record = transferlab.export(f"ckpt_path={runs['ckpt']}", "format=timm", run_dir=tmp_path / "export").metrics
    assert record["check"]["max_abs_diff"] <= record["check"]["tolerance"]
    predicted = probabilities(rows(transferlab.predict(f"ckpt_path={runs['ckpt']}", f"inputs={images / 'val'}",
                                                       "progress=false", "probabilities=true",
                                                       run_dir=tmp_path / "predict").run_dir), CLASSES)
    # A new interpreter, because the point is that nothing of transferlab is imported to open the folder.
    script = f"""
import json, sys, timm, torch
from pathlib import Path
from PIL import Image
model = timm.create_model('local-dir:{record['folder']}', pretrained=True).eval()
transform = timm.data.create_transform(**timm.data.resolve_data_config({{}}, model=model))
out = {{}}
with torch.no_grad():
    for path in {sorted(predicted)!r}:
        with Image.open(path) as image:
            out[path] = model(transform(image.convert('RGB')).unsqueeze(0)).softmax(-1)[0].tolist()
print(json.dumps({{'probs': out, 'labels': model.pretrained_cfg['label_names'],
                  'transferlab': any(m.startswith('transferlab') for m in sys.modules)}}))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    opened = json.loads(done.stdout.strip().splitlines()[-1])
    assert opened["labels"] == CLASSES and not opened["transferlab"]
    worst = max(np.abs(np.array(opened["probs"][k]) - predicted[k]).max() for k in predicted)
    assert worst < 1e-5  # same transform, same weights, one image per call against a batch: rounding only


def test_an_onnx_export_runs_in_onnxruntime_like_pytorch_and_holds_an_ensemble(runs, images, tmp_path):
    import onnxruntime

    record = transferlab.export(f"fusion={runs['ensemble']}", "format=onnx", run_dir=tmp_path / "export").metrics
    assert record["check"]["max_abs_diff"] < 1e-5
    session = onnxruntime.InferenceSession(str(Path(record["folder"]) / "model.onnx"))
    meta = session.get_modelmeta().custom_metadata_map
    assert json.loads(meta["class_names"]) == {"main": CLASSES} and meta["outputs"] == "log-probabilities"
    assert json.loads(meta["preprocessing"])["input_size"] == [3, 32, 32]
    predicted = probabilities(rows(transferlab.predict(f"fusion={runs['ensemble']}", f"inputs={images / 'val'}",
                                                       "progress=false", "probabilities=true", "batch_size=7",
                                                       run_dir=tmp_path / "predict").run_dir), CLASSES)
    from transferlab.deploy import load

    transform = load(fusion=runs["ensemble"]).transform()
    from PIL import Image

    paths = sorted(predicted)
    batch = np.stack([transform(Image.open(p).convert("RGB"))["pixel_values"].numpy() for p in paths])
    (out,) = session.run(None, {"pixel_values": batch})  # a batch size the export never saw
    probs = np.exp(out.astype(np.float64))
    assert max(np.abs(probs[i] - predicted[p]).max() for i, p in enumerate(paths)) < 1e-5


def test_a_safetensors_export_predicts_like_its_checkpoint_and_is_a_source_for_training(runs, images, tmp_path):
    from helpers import backbone_state

    from transferlab.models import create_model, from_checkpoint

    record = transferlab.export(f"ckpt_path={runs['ckpt']}", "format=safetensors", run_dir=tmp_path / "export").metrics
    weights = Path(record["folder"]) / "model.safetensors"
    assert record["check"]["max_abs_diff"] == 0 and record["source"]["checkpoint"] == str(runs["ckpt"].resolve())
    tables = [rows(transferlab.predict(f"ckpt_path={path}", f"inputs={images / 'val'}", "progress=false",
                                       run_dir=tmp_path / name).run_dir) for name, path in (("a", runs["ckpt"]),
                                                                                              ("b", weights))]
    assert tables[0] == tables[1]  # the same tensors through the same code: the same file
    loaded = from_checkpoint(runs["ckpt"])
    fresh = create_model(loaded.model.family, loaded.tasks, str(weights), 32)  # tl-train's, for model.checkpoint=<file>
    assert all((v == fresh.backbone.state_dict()[k]).all() for k, v in backbone_state(runs["ckpt"]).items())


def test_an_export_never_writes_over_a_folder_and_a_refused_one_leaves_nothing(runs, tmp_path):
    out = tmp_path / "mine"
    transferlab.export(f"ckpt_path={runs['ckpt']}", "format=safetensors", f"out={out}", run_dir=tmp_path / "one")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(ConfigError, match="never written over"):
        transferlab.export(f"ckpt_path={runs['ckpt']}", "format=onnx", f"out={out}", run_dir=tmp_path / "two")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    with pytest.raises(ConfigError, match="holds one model.*ensemble of 2.*valid formats for an ensemble: onnx"):
        transferlab.export(f"fusion={runs['ensemble']}", "format=timm", run_dir=tmp_path / "three")
    assert not (tmp_path / "three" / "timm").exists() and not list(tmp_path.glob("**/.*.partial-*"))


@pytest.mark.parametrize("case", ["not_transferlab", "no_images", "text_file", "top_k", "format", "family", "column",
                                  "no_format", "task_of_onnx", "fusion_of_a_run"])
def test_bad_input_is_a_clear_error_naming_the_value(case, runs, images, tmp_path):
    import torch

    foreign = tmp_path / "weights.pt"
    torch.save({"w": torch.zeros(2)}, foreign)
    empty = tmp_path / "empty"
    empty.mkdir()
    (tmp_path / "notes.txt").write_text("a text\n")
    (tmp_path / "list.csv").write_text("file\nx.png\n")
    ckpt = f"ckpt_path={runs['ckpt']}"
    calls = {
        "not_transferlab": (transferlab.predict, [f"ckpt_path={foreign}", f"inputs={images}"], "not a transferlab checkpoint"),
        "no_images": (transferlab.predict, [ckpt, f"inputs={empty}"], "holds no images"),
        "text_file": (transferlab.predict, [ckpt, f"inputs={tmp_path / 'notes.txt'}"], "not something this image model reads"),
        "top_k": (transferlab.predict, [ckpt, f"inputs={images}", "top_k=6"], "top_k=6 .* valid: 1..5"),
        "format": (transferlab.export, [ckpt, "format=tflite"], "unknown export format 'tflite'.*valid: "),
        "family": (transferlab.export, [ckpt, "format=hf"], "format=hf holds text models.*reads images; valid formats"),
        "column": (transferlab.predict, [ckpt, f"inputs={tmp_path / 'list.csv'}"], "inputs.column=path is not a column.*file"),
        "no_format": (transferlab.export, [ckpt], "format is required; valid: .*onnx"),
        "task_of_onnx": (transferlab.export, [ckpt, "format=onnx", "task=main"],
                         "task=main is not taken by format=onnx, which holds every task.*hf, timm"),
        "fusion_of_a_run": (transferlab.predict, [f"fusion={runs['ckpt'].parent.parent}", f"inputs={images}"],
                            "is not a tl-fuse folder.*ckpt_path=.*best.ckpt"),
    }
    act, args, message = calls[case]
    with pytest.raises((ConfigError, DataError, CheckpointError), match=message):
        act(*args, "progress=false", run_dir=tmp_path / "out") if act is transferlab.predict else act(
            *args, run_dir=tmp_path / "out")
    assert not (tmp_path / "out" / "summary.json").exists()
    assert not [p for p in (tmp_path / "out").glob("*") if p.name not in ("export.log", "predict.log", ".hydra")]
    assert not list(tmp_path.glob("**/.*.partial-*"))  # an export refused leaves no staging folder either


@pytest.fixture(scope="module")
def text_ckpt(root):
    from helpers import TEXT

    return transferlab.train(*TEXT, "source=none", run_dir=root / "text").run_dir / "checkpoints" / "best.ckpt"


def test_a_text_model_predicts_lines_and_tables_with_tl_evals_metrics(text_ckpt, tmp_path):
    ckpt = text_ckpt
    from transferlab.data.synthetic_text import TOPICS, generate

    texts, topics = generate(40, "target", 0.0, 3)[:2]
    # a byte-order mark opens the file (Notepad writes one); the last line is not UTF-8
    (tmp_path / "new.txt").write_bytes(b"\xef\xbb\xbf" + b"\n".join(t.encode() for t in texts[:5]) + b"\n\xff\xfe not utf-8\n")
    summary = transferlab.predict(f"ckpt_path={ckpt}", f"inputs={tmp_path / 'new.txt'}", "progress=false",
                                  "output_format=jsonl", "probabilities=true", run_dir=tmp_path / "lines").metrics
    lines = [json.loads(x) for x in (tmp_path / "lines" / "predictions.jsonl").read_text().splitlines()]
    assert summary["predicted"] == 5 and summary["failed"] == 1 and "not UTF-8" in lines[-1]["error"]
    assert lines[-1]["input"].endswith("new.txt:6") and all(isinstance(x["main.top_k"], list) for x in lines)
    classes = [k[len("main.prob."):] for k in lines[0] if k.startswith("main.prob.")]
    table = tmp_path / "new.jsonl"  # a manifest whose label column is named like the task's (topic)
    table.write_text("".join(json.dumps({"text": t, "topic": TOPICS[y]}) + "\n" for t, y in zip(texts, topics)))
    labelled = transferlab.predict(f"ckpt_path={ckpt}", f"inputs={table}", "progress=false", "probabilities=true",
                                   run_dir=tmp_path / "table").metrics
    import pyarrow.parquet as pq

    transferlab.predict(f"ckpt_path={ckpt}", f"inputs={table}", "progress=false", "output_format=parquet",
                        run_dir=tmp_path / "parquet")
    stored = pq.read_table(tmp_path / "parquet" / "predictions.parquet").to_pylist()
    assert [r["main"] for r in stored] == [r["main"] for r in rows(tmp_path / "table")]
    first = [float(lines[0][f"main.prob.{c}"]) for c in classes]  # the mark is not part of the first text
    assert first == pytest.approx([float(rows(tmp_path / "table")[0][f"main.prob.{c}"]) for c in classes], abs=1e-6)
    assert all(len(r["main.top_k"]) == 4 for r in stored)  # a list column: up to 5, and the task has 4 classes
    with pytest.raises(DataError, match="is a folder, and this model reads texts; give a .txt file"):
        transferlab.predict(f"ckpt_path={ckpt}", f"inputs={tmp_path}", "progress=false", run_dir=tmp_path / "folder")
    evaluated = transferlab.evaluate(ckpt, "data=text_files", f"data.train={table}", f"data.test={table}",
                                     f"data.classes=[{','.join(classes)}]", "logger=csv", run_dir=tmp_path / "eval").metrics
    assert labelled["predict/labelled"] == 40
    partly = tmp_path / "partly.jsonl"  # a missing label is an unlabelled input; a label no class is: no metrics
    partly.write_text("".join(json.dumps({"text": t, "topic": label}) + "\n"
                              for t, label in zip(texts, [TOPICS[topics[0]], None, float("nan"), TOPICS[topics[3]]])))
    assert transferlab.predict(f"ckpt_path={ckpt}", f"inputs={partly}", "progress=false",
                               run_dir=tmp_path / "partly").metrics["predict/labelled"] == 2
    partly.write_text("".join(json.dumps({"text": t, "topic": label}) + "\n" for t, label in zip(texts, ["nonsense", TOPICS[0]])))
    unknown = transferlab.predict(f"ckpt_path={ckpt}", f"inputs={partly}", "progress=false", run_dir=tmp_path / "unknown")
    assert "predict/acc" not in unknown.metrics and len(rows(tmp_path / "unknown")) == 2
    with pytest.raises(ConfigError, match="inputs.pair_column=topic is given, and this model reads single texts"):
        transferlab.predict(f"ckpt_path={ckpt}", f"inputs={partly}", "inputs.pair_column=topic", "progress=false",
                            run_dir=tmp_path / "pair")
    for metric in ("acc", "f1"):
        assert labelled[f"predict/{metric}"] == pytest.approx(evaluated[f"test/{metric}"], abs=1e-6)


def test_a_multi_task_model_predicts_every_task_and_exports_the_one_named(images, tmp_path):
    run = transferlab.train(*FAST, "experiment=digits_multitask", "trainer.max_epochs=1", run_dir=tmp_path / "run")
    ckpt = run.run_dir / "checkpoints" / "best.ckpt"
    summary = transferlab.predict(f"ckpt_path={ckpt}", f"inputs={images / 'val'}", "progress=false",
                                  run_dir=tmp_path / "predict").metrics
    table = rows(tmp_path / "predict")
    tasks = sorted(k for k in table[0] if k and "." not in k and k not in ("input", "error"))
    assert len(tasks) == 2 and all(r[t] for r in table for t in tasks)
    assert "predict/main/acc" in summary and not any(k.startswith(f"predict/{t}/") for k in summary for t in tasks
                                                     if t != "main")  # the images are labelled for main only
    with pytest.raises(ConfigError, match=f"has tasks {', '.join(tasks)} and this format holds one: .*task=<name>"):
        transferlab.export(f"ckpt_path={ckpt}", "format=timm", run_dir=tmp_path / "none")
    other = next(t for t in tasks if t != "main")
    record = transferlab.export(f"ckpt_path={ckpt}", "format=timm", f"task={other}", run_dir=tmp_path / "one").metrics
    assert record["task"] == other and json.loads((Path(record["folder"]) / "config.json").read_text())["label_names"] == \
        ["0", "1", "2", "3", "4"]


def test_tl_export_format_hf_writes_a_checked_folder_with_its_record_and_card(text_ckpt, tmp_path):
    # What plain transformers makes of the folder is tests/test_export_hf.py's (both pooling and head paths).
    result = cli("tl-export", f"ckpt_path={text_ckpt}", "format=hf", f"hydra.run.dir={tmp_path / 'export'}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    folder = tmp_path / "export" / "hf"
    record = json.loads((folder / "transferlab.json").read_text())
    assert record["check"]["max_abs_diff"] <= record["check"]["tolerance"] == 1e-5 and record["task"] == "main"
    assert record["source"]["checkpoint"] == str(text_ckpt.resolve()) and "test/acc" in record["source"]["metrics"]
    assert "trust_remote_code=True" in (folder / "README.md").read_text() and f"exported hf to {folder}" in result.stdout
    assert not list((tmp_path / "export").glob(".*partial*"))


def test_a_text_pair_model_predicts_pairs_and_its_onnx_export_reads_the_tokenizer_beside_it(tmp_path):
    """A model trained on pairs (data.text_pair_column) reads a manifest's two columns, as tl-eval does, and
    its ONNX graph gives the same probabilities on pairs that the exported tokenizer.json encodes."""
    import onnxruntime
    from helpers import TEXT
    from tokenizers import Tokenizer

    from transferlab.data.synthetic_text import TOPICS, generate

    texts, topics = generate(48, "target", 0.0, 5)[:2]
    table = tmp_path / "pairs.jsonl"  # the second text: the first one's words reversed
    table.write_text("".join(json.dumps({"premise": t, "hypothesis": " ".join(reversed(t.split())), "topic": TOPICS[y]})
                             + "\n" for t, y in zip(texts, topics)))
    data = ["data=text_files", f"data.train={table}", "data.text_column=premise", "data.text_pair_column=hypothesis"]
    run = transferlab.train(*[o for o in TEXT if not o.startswith("data")], *data, "data.batch_size=16", "trainer.max_epochs=1",
                            "source=none", run_dir=tmp_path / "run")
    ckpt = run.run_dir / "checkpoints" / "best.ckpt"
    summary = transferlab.predict(f"ckpt_path={ckpt}", f"inputs={table}", "progress=false", "probabilities=true",
                                  run_dir=tmp_path / "predict").metrics
    evaluated = transferlab.evaluate(ckpt, *data, f"data.test={table}", "logger=csv", run_dir=tmp_path / "eval").metrics
    assert summary["predict/labelled"] == 48 and summary["predict/acc"] == pytest.approx(evaluated["test/acc"], abs=1e-6)
    (tmp_path / "lines.txt").write_text(texts[0])
    with pytest.raises(DataError, match="reads pairs of texts .*data.text_pair_column=hypothesis"):
        transferlab.predict(f"ckpt_path={ckpt}", f"inputs={tmp_path / 'lines.txt'}", "progress=false",
                            run_dir=tmp_path / "lines")
    record = transferlab.export(f"ckpt_path={ckpt}", "format=onnx", run_dir=tmp_path / "export").metrics
    assert record["preprocessing"]["text_pair"] is True and record["check"]["max_abs_diff"] < 1e-4
    folder = Path(record["folder"])
    session = onnxruntime.InferenceSession(str(folder / "model.onnx"))
    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    predicted = probabilities(rows(tmp_path / "predict"), [k[len("main.prob."):] for k in rows(tmp_path / "predict")[0]
                                                           if k.startswith("main.prob.")])
    for n, text in enumerate(texts[:4]):  # the pair as tokenizer.json encodes it: what the graph reads, batch 1
        encoded = tokenizer.encode(text, " ".join(reversed(text.split())))
        given = {"input_ids": encoded.ids, "attention_mask": encoded.attention_mask, "token_type_ids": encoded.type_ids}
        (logits,) = session.run(None, {i.name: np.array([given[i.name]]) for i in session.get_inputs()})
        probs = np.exp(logits[0] - logits[0].max()) / np.exp(logits[0] - logits[0].max()).sum()
        assert np.abs(probs - predicted[f"{table}: line {n + 1}"]).max() < 1e-5


def test_lightnings_precision_names_map_to_the_dtype_predict_runs_in():
    from transferlab.deploy.predict import autocast_dtype

    assert [autocast_dtype(p) for p in ("bf16-mixed", "bf16-true", "16-mixed", "16-true", "32-true", "64-true")] == \
        ["bfloat16", "bfloat16", "float16", "float16", None, None]
    with pytest.raises(ConfigError, match="the run's trainer.precision=8-mixed is not valid for tl-predict; valid: "):
        autocast_dtype("8-mixed", "the run's trainer.precision")
