"""``tl-predict``: a finished model (``deploy.load``) on new inputs, one row per input.

Inputs are read the way the model's modality reads them — images: a folder (recursive) or a manifest
(csv/tsv/jsonl/parquet) whose ``inputs.column`` holds paths; texts: a ``.txt`` (one per line) or a
manifest whose ``inputs.column`` holds them — and fed through the run's own evaluation transform or
tokenisation, in batches. An input that cannot be read is a row with its error (``on_error=row``), or
stops the command (``on_error=fail``). Inputs that carry labels (class sub-folders, or a manifest
column named like the task's label column) also get the metrics ``tl-eval`` would give on them.
"""
from __future__ import annotations

import codecs
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from transferlab import metrics as names
from transferlab import runs
from transferlab.errors import ConfigError, DataError

log = logging.getLogger(__name__)
TABLES = ("csv", "tsv", "jsonl", "parquet")


@dataclass
class Inputs:
    """What to predict on: ``ids`` name the inputs in the output, ``read(i)`` gives input i's raw item
    (a PIL image or a text), ``labels`` the class names they carry per label column (or None)."""
    ids: list[str]
    read: object
    labels: dict[str, list] | None = None


def read_inputs(path, column: str | None, modality: str, label_columns: list[str], pair_column: str | None = None,
                text_column: str = "text") -> Inputs:
    """The inputs at ``path`` for a model of ``modality``; ``label_columns``: the tasks' own label
    columns, whose values (or a folder's class sub-folders) are labels; ``pair_column``: a text-pair
    model's second text (its inputs are then (text, second text)); ``text_column``: the default column."""
    path = Path(path).expanduser()
    if not path.exists():
        raise DataError(f"inputs={path} does not exist; give {_valid(modality)}")
    suffix = path.suffix.lower().lstrip(".")
    if path.is_dir():
        if modality != "image":
            raise DataError(f"inputs={path} is a folder, and this model reads texts; give {_valid(modality)}")
        return _image_folder(path)
    if suffix == "txt" and modality == "text":
        if pair_column:
            raise DataError(f"inputs={path} holds one text per line, and this model reads pairs of texts (its run's "
                            f"data.text_pair_column={pair_column}); give a table (.csv, .tsv, .jsonl, .parquet) with "
                            f"both columns (inputs.column, inputs.pair_column)")
        return _lines(path)
    if suffix in TABLES or suffix in ("json", "ndjson"):
        return _manifest(path, column or ("path" if modality == "image" else text_column), modality, label_columns,
                         pair_column)
    raise DataError(f"inputs={path} is not something this {modality} model reads; give {_valid(modality)}")


def _valid(modality: str) -> str:
    if modality == "image":
        return ("a folder of images (searched recursively) or a manifest (.csv, .tsv, .jsonl, .parquet) whose "
                "inputs.column holds image paths")
    return "a .txt file (one text per line) or a table (.csv, .tsv, .jsonl, .parquet) whose inputs.column holds the texts"


def _open_image(path: str):
    from PIL import Image

    from transferlab.data.image_folder import decode

    with Image.open(path) as img:
        return decode(img)


def _image_folder(root: Path) -> Inputs:
    """Every image under ``root``, sorted; labelled when each lies directly in a class sub-folder."""
    from transferlab.data.image_folder import IMG_EXTENSIONS

    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMG_EXTENSIONS and p.is_file())
    if not files:
        raise DataError(f"inputs={root} holds no images ({', '.join(IMG_EXTENSIONS)}), searched recursively")
    ids = [str(p) for p in files]
    parents = [p.parent for p in files]
    labels = None
    if all(parent.parent == root for parent in parents):  # root/<class>/<image>: the layout of a labelled folder
        labels = {None: [parent.name for parent in parents]}  # None: whichever task's column; checked later
    return Inputs(ids, lambda i: _open_image(ids[i]), labels)


def _lines(path: Path) -> Inputs:
    """One text per non-empty line; a line that is not UTF-8 is an input with an error, not the file's."""
    texts, ids = [], []
    data = path.read_bytes()
    data = data[len(codecs.BOM_UTF8):] if data.startswith(codecs.BOM_UTF8) else data  # the file's mark, not text
    for n, raw in enumerate(data.splitlines(), 1):
        if raw.strip():
            texts.append(raw)
            ids.append(f"{path}:{n}")

    def read(i):
        try:
            return texts[i].decode("utf-8").strip()
        except UnicodeDecodeError as e:
            raise DataError(f"line is not UTF-8 text (byte 0x{texts[i][e.start]:02x})") from None
    if not ids:
        raise DataError(f"inputs={path} holds no text (every line is empty)")
    return Inputs(ids, read)


def _label(value, where: str, column: str):
    """A manifest's label cell as its class name, as the run's data read it (``5.0`` is class ``5``);
    an empty or NaN cell is an input without a label."""
    from transferlab.data.text import label_name

    try:
        return label_name(value, where, column)
    except DataError:
        return None


def _manifest(path: Path, column: str, modality: str, label_columns: list[str], pair_column: str | None) -> Inputs:
    from transferlab.data.text_files import read_rows

    rows, origin = read_rows(path)
    columns = list(dict.fromkeys(k for r in rows[:100] for k in r))
    for key, name in (("inputs.column", column), ("inputs.pair_column", pair_column)):
        if name is not None and name not in columns:
            raise DataError(f"{key}={name} is not a column of '{path}'; its columns: {', '.join(columns)}")
    values = [r.get(column) for r in rows]
    labels = {c: [_label(r.get(c), where, c) for r, where in zip(rows, origin)]
              for c in label_columns if c in columns and c not in (column, pair_column)} or None
    if modality == "image":  # paths relative to the manifest's folder, as a dataset's manifest is read
        ids = [str(v if Path(str(v)).is_absolute() else path.parent / str(v)) if v else "" for v in values]

        def read(i):
            if not ids[i]:
                raise DataError(f"{origin[i]} has no path in column '{column}'")
            return _open_image(ids[i])
        return Inputs(ids, read, labels)

    seconds = [r.get(pair_column) for r in rows] if pair_column else None

    def text(i):
        for name, cell in ((column, values[i]), (pair_column, seconds[i] if seconds else "-")):
            if not isinstance(cell, str) or not cell.strip():
                raise DataError(f"{origin[i]} has no text in column '{name}'")
        return (values[i], seconds[i]) if seconds else values[i]
    return Inputs(origin, text, labels)


class _Items:
    """Input i as (i, model inputs or None, error or None): one unreadable input never stops the batch."""

    def __init__(self, inputs: Inputs, transform, fail: bool):
        self.inputs, self.transform, self.fail = inputs, transform, fail

    def __len__(self):
        return len(self.inputs.ids)

    def __getitem__(self, i):
        try:
            return i, self.transform(self.inputs.read(i)), None
        except Exception as e:  # noqa: BLE001 - any failure to read or decode one input is that input's
            if self.fail:
                raise DataError(f"cannot read input {self.inputs.ids[i]}: {type(e).__name__}: {e} "
                                f"(on_error=row records it and goes on)") from None
            return i, None, f"{type(e).__name__}: {e}"


def _collate(transform):
    from torch.utils.data import default_collate

    def collate(items):
        good = [(i, x) for i, x, error in items if error is None]
        errors = {i: error for i, _, error in items if error is not None}
        if not good:
            return [], None, errors
        if hasattr(transform, "collate"):  # text: tokenised as a batch, padded to its longest
            inputs, _ = transform.collate([(x, {}) for _, x in good])
        else:
            inputs = default_collate([x for _, x in good])
        return [i for i, _ in good], inputs, errors
    return collate


# Lightning's precision names -> the dtype tl-predict computes in under autocast (None: float32, no autocast).
# A "-true" half precision (weights cast to half) predicts under autocast here: same arithmetic for the
# matrix products, without casting the checkpoint's weights.
PRECISIONS = {"16-mixed": "float16", "16-true": "float16", "16": "float16", "bf16-mixed": "bfloat16",
              "bf16-true": "bfloat16", "bf16": "bfloat16", "32-true": None, "32": None, "64-true": None, "64": None}


def autocast_dtype(precision, where: str = "trainer.precision"):
    """The autocast dtype name for a Lightning precision (None: float32), or a ConfigError naming ``where``."""
    if str(precision) not in PRECISIONS:
        raise ConfigError(f"{where}={precision} is not valid for tl-predict; valid: {', '.join(PRECISIONS)}")
    return PRECISIONS[str(precision)]


def _device_and_autocast(accelerator: str, precision: str | None, run_precision: str):
    """Where and at what precision to run: a GPU runs at the run's precision unless told, a CPU in float32."""
    import torch

    gpu = accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()
    if accelerator in ("gpu", "cuda") and not gpu:
        raise ConfigError(f"trainer.accelerator={accelerator} but this machine has no CUDA GPU; valid here: cpu, auto")
    if precision is not None:
        dtype = autocast_dtype(precision)
    else:
        dtype = autocast_dtype(run_precision, "the run's trainer.precision") if gpu else None
    device = torch.device("cuda" if gpu else "cpu")
    if dtype is None:
        return device, torch.autocast(device.type, enabled=False)
    return device, torch.autocast(device.type, dtype=getattr(torch, dtype))


def predict(cfg) -> dict:
    """``tl-predict``: predictions.csv (or .jsonl / .parquet) and summary.json in ``cfg.paths.run_dir``;
    returns the summary (counts, and the metrics when the inputs carry labels)."""
    from omegaconf import OmegaConf

    from transferlab import deploy

    if OmegaConf.is_missing(cfg.inputs, "path"):
        raise ConfigError("inputs is required: tl-predict ckpt_path=PATH/TO/best.ckpt inputs=FOLDER_OR_FILE")
    if cfg.get("output_format") not in ("csv", "jsonl", "parquet"):
        raise ConfigError(f"output_format={cfg.get('output_format')} is not valid; valid: csv, jsonl, parquet")
    if cfg.get("on_error") not in ("row", "fail"):
        raise ConfigError(f"on_error={cfg.get('on_error')} is not valid; valid: row (an unreadable input is a row "
                          f"with its error), fail (stop at the first)")
    deploy.check_source(cfg.get("ckpt_path"), cfg.get("fusion_dir"))
    import numpy as np  # torch, timm and Lightning: once the command line is sound
    import torch
    from torch.utils.data import DataLoader

    model = deploy.load(cfg.get("ckpt_path"), cfg.get("fusion_dir"))
    tasks = [t for t in model.tasks if not t.token_level]
    for task in tasks:
        if cfg.top_k is not None and not 1 <= int(cfg.top_k) <= task.num_classes:
            raise ConfigError(f"top_k={cfg.top_k} is not valid for task '{task.name}', which has {task.num_classes} "
                              f"classes; valid: 1..{task.num_classes}")
    if cfg.inputs.get("pair_column") and not model.pair_column:
        raise ConfigError(f"inputs.pair_column={cfg.inputs.pair_column} is given, and this model reads single texts "
                          f"(its run has no data.text_pair_column); leave inputs.pair_column unset")
    inputs = read_inputs(cfg.inputs.path, cfg.inputs.get("column"), model.modality, [t.column for t in tasks],
                         cfg.inputs.get("pair_column") or model.pair_column, getattr(model.data, "text_column", "text"))
    out = runs.RunDir(cfg.paths.run_dir)
    runs.claim(out.path)
    device, autocast = _device_and_autocast(cfg.trainer.accelerator, cfg.trainer.get("precision"),
                                            model.members[0].config.get("trainer", {}).get("precision", "32-true"))
    transform = model.transform()
    loader = DataLoader(_Items(inputs, transform, cfg.on_error == "fail"), collate_fn=_collate(transform),
                        batch_size=int(cfg.batch_size or model.data.batch_size), num_workers=int(cfg.num_workers))
    network = model.network.to(device)
    logits = {t.name: np.full((len(inputs.ids), t.num_classes), np.nan) for t in tasks}
    errors: dict[int, str] = {}
    start = time.perf_counter()
    with torch.inference_mode(), autocast:
        for index, batch, failed in _progress(loader, cfg.get("progress", True)):
            errors.update(failed)
            if index:
                outputs = network({k: v.to(device) for k, v in batch.items()})
                for t in tasks:
                    logits[t.name][index] = outputs[t.name].float().cpu().double().numpy()
    seconds = time.perf_counter() - start  # reading, transforming and the forward passes
    network.cpu()
    summary = {"inputs": len(inputs.ids), "predicted": len(inputs.ids) - len(errors), "failed": len(errors),
               "predict_seconds": round(seconds, 3), "inputs_per_second": round(len(inputs.ids) / seconds, 1),
               "model": model.source.get("checkpoint") or model.source.get("fusion_dir"),
               **_metrics(tasks, logits, inputs, errors)}
    rows = _rows(tasks, logits, inputs, errors, cfg)
    file = out.file(f"{runs.PREDICTIONS}.{cfg.output_format}")
    _write_rows(file, rows, cfg.output_format)
    runs.write_json(out.file(runs.SUMMARY), summary)
    if errors:
        first = min(errors)
        log.warning("%d of %d inputs could not be read (first: %s: %s); they are rows with their error in %s",
                    len(errors), len(inputs.ids), inputs.ids[first], errors[first], file)
    if summary["predicted"] == 0:
        raise DataError(f"none of the {len(inputs.ids)} inputs could be read (first: {inputs.ids[min(errors)]}: "
                        f"{errors[min(errors)]}); the rows with their errors are in {file}")
    return summary


def _progress(loader, enabled: bool):
    if not enabled:
        return loader
    from tqdm import tqdm

    return tqdm(loader, desc="predict", unit="batch")


def _softmax(x):
    import numpy as np

    e = np.exp(x - x.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def _rows(tasks, logits, inputs: Inputs, errors: dict, cfg) -> list[dict]:
    """One row per input: its id, per task the predicted class name, its probability and the top k; an
    ensemble's outputs are already log-probabilities, which softmax leaves as they are."""
    import numpy as np

    rows = [{"input": i, "error": errors.get(n, "")} for n, i in enumerate(inputs.ids)]
    for t in tasks:
        names_ = list(t.class_names)
        k = int(cfg.top_k) if cfg.top_k is not None else min(5, t.num_classes)
        probs = _softmax(np.nan_to_num(logits[t.name]))
        order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
        for n, row in enumerate(rows):
            if n in errors:
                row.update({f"{t.name}": "", f"{t.name}.prob": None, f"{t.name}.top_k": [], f"{t.name}.top_k_probs": []})
                continue
            top = order[n]
            row.update({f"{t.name}": names_[top[0]], f"{t.name}.prob": float(probs[n, top[0]]),
                        f"{t.name}.top_k": [names_[j] for j in top],
                        f"{t.name}.top_k_probs": [round(float(probs[n, j]), 6) for j in top]})
            if cfg.get("probabilities"):
                row.update({f"{t.name}.prob.{c}": float(probs[n, j]) for j, c in enumerate(names_)})
            if cfg.get("logits"):
                row.update({f"{t.name}.logit.{c}": float(logits[t.name][n, j]) for j, c in enumerate(names_)})
    return rows


def _labels_of(tasks, inputs: Inputs) -> dict:
    """Each task's labels: a manifest's from the task's own label column; a folder's class sub-folders for
    the one task whose classes they are (none when they are no task's, or several tasks' alike)."""
    if not inputs.labels:
        return {}
    out = {t.name: inputs.labels[t.column] for t in tasks if t.column in inputs.labels}
    folder = inputs.labels.get(None)
    if folder is not None:
        fits = [t for t in tasks if set(folder) <= set(map(str, t.class_names))]
        if len(fits) == 1:
            out[fits[0].name] = folder
        else:
            log.info("the inputs' sub-folders are the classes of %s: no metrics",
                     f"tasks {', '.join(t.name for t in fits)} alike" if fits else "no task")
    return out


def _metrics(tasks, logits, inputs: Inputs, errors: dict) -> dict:
    """Accuracy, macro precision, recall and F1 per task whose labels the inputs carry (the readable ones),
    computed as ``tl-eval`` computes them; labels that are not the task's classes give a warning, no metrics."""
    import numpy as np

    from transferlab.evaluation import confusion, per_class

    out = {}
    several = len(tasks) > 1
    labelled = _labels_of(tasks, inputs)
    for t in tasks:
        labels = labelled.get(t.name)
        if labels is None:
            continue
        classes = list(map(str, t.class_names))
        keep = [n for n, label in enumerate(labels) if n not in errors and label is not None]
        unknown = sorted({labels[n] for n in keep} - set(classes))
        if unknown:
            log.warning("the inputs' labels %s (column '%s') are not classes of task '%s' (its classes: %s): "
                        "no metrics for it; the predictions are written", unknown[:5], t.column, t.name,
                        ", ".join(classes[:20]))
            continue
        y = np.array([classes.index(labels[n]) for n in keep])
        matrix = confusion(logits[t.name][keep], y, t.num_classes)
        scores = per_class(matrix)
        values = {"acc": float(np.trace(matrix) / max(1, matrix.sum())), "precision": float(scores.precision.mean()),
                  "recall": float(scores.recall.mean()), "f1": float(scores.f1.mean())}
        out.update({names.name("predict", m, t.name if several else None): v for m, v in values.items()})
        out[names.name("predict", "labelled", t.name if several else None)] = len(keep)
    return out


def _write_rows(file: Path, rows: list[dict], fmt: str) -> None:
    """csv: list cells as JSON (``["cat", "dog"]``); jsonl and parquet keep them lists."""
    if fmt == "csv":
        import csv
        import io

        columns = list(dict.fromkeys(k for r in rows for k in r))
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=columns)
        writer.writeheader()
        for r in rows:
            writer.writerow({k: json.dumps(v) if isinstance(v, list) else ("" if v is None else v) for k, v in r.items()})
        runs.write_atomic(file, buf.getvalue())
    elif fmt == "jsonl":
        runs.write_atomic(file, "".join(json.dumps(r) + "\n" for r in rows))
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        tmp = file.with_name(file.name + ".partial")
        pq.write_table(pa.Table.from_pylist(rows), tmp)
        tmp.replace(file)
