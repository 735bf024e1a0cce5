"""Evaluation a reviewer asks for: which classes fail (per-class precision, recall, F1 and the confusion
matrix, by class name) and whether the probabilities can be trusted (ECE and NLL, a temperature fitted on
validation). The measures are checked against their definitions and an independent implementation; a
run, tl-eval and tl-fuse must write them, W&B must hold them, the report must show ECE."""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest

from helpers import FAST, metrics, read_csv
from transferlab.evaluation import calibration, confusion, ece, fit_temperature, nll, per_class

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def softmax(z):
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def test_ece_is_zero_when_confidence_equals_accuracy_in_every_bin_and_the_gap_otherwise():
    # bin (0.8, 0.867]: 10 items at 0.8 confidence, 8 right; bin (0.6, 0.667]: 5 at 0.6, 3 right
    probs = np.array([[0.8, 0.2]] * 10 + [[0.4, 0.6]] * 5)
    labels = np.array([0] * 8 + [1] * 2 + [1] * 3 + [0] * 2)
    assert ece(probs, labels, 15) == pytest.approx(0.0, abs=1e-12)
    # everything at 0.9 confidence, half right: |0.5 - 0.9|
    assert ece(np.array([[0.9, 0.1]] * 4), np.array([0, 0, 1, 1]), 15) == pytest.approx(0.4, abs=1e-12)


def test_ece_equals_torchmetrics_calibration_error_on_random_predictions():
    import torch
    from torchmetrics.functional.classification import multiclass_calibration_error

    rng = np.random.default_rng(0)
    logits, labels = rng.normal(size=(500, 7)) * 3, rng.integers(0, 7, 500)
    theirs = multiclass_calibration_error(torch.tensor(softmax(logits)), torch.tensor(labels), 7, n_bins=15,
                                          norm="l1")
    assert ece(softmax(logits), labels, 15) == pytest.approx(float(theirs), abs=1e-5)


def test_temperature_undoes_overconfidence_and_keeps_every_prediction():
    """Labels drawn from softmax(z), logits 3z: the fitted temperature is about 3, NLL and ECE fall."""
    rng = np.random.default_rng(1)
    z = rng.normal(size=(20000, 5))
    labels = np.array([rng.choice(5, p=p) for p in softmax(z)])
    t = fit_temperature(3 * z, labels)
    assert t == pytest.approx(3.0, rel=0.05)
    out = calibration(3 * z, labels, 15, validation=(3 * z, labels))
    assert out["nll_calibrated"] < out["nll"] and out["ece_calibrated"] < out["ece"] / 2
    assert (np.argmax(3 * z / t, 1) == np.argmax(3 * z, 1)).all()
    assert nll(z, labels) == pytest.approx(-np.log(softmax(z)[np.arange(len(labels)), labels]).mean(), rel=1e-12)


def test_confusion_and_per_class_scores_equal_scikit_learns():
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    rng = np.random.default_rng(2)
    logits, labels = rng.normal(size=(300, 6)), rng.integers(0, 5, 300)  # class 5 never true: zero division
    predicted = logits.argmax(1)
    matrix = confusion(logits, labels, 6)
    assert (matrix == confusion_matrix(labels, predicted, labels=range(6))).all()
    theirs = precision_recall_fscore_support(labels, predicted, labels=range(6), zero_division=0)
    for ours, expected in zip(per_class(matrix), theirs):
        np.testing.assert_allclose(ours, expected, atol=1e-12)


# --- a run, its evaluation and its fusion ---------------------------------------------------------------

@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    import transferlab

    root = tmp_path_factory.mktemp("evaluation")
    run = transferlab.train(*FAST, "logger=many", "+eval_sets.noisy.corruption.kind=gaussian_noise",
                            run_dir=root / "run")
    return root, run.run_dir


def read_matrix(path):
    rows = list(csv.reader(path.open()))
    return rows[0][1:], [r[0] for r in rows[1:]], np.array([[int(v) for v in r[1:]] for r in rows[1:]])


def test_confusion_matrix_sums_to_the_test_items_and_its_diagonal_is_test_accuracy(finished):
    _, run_dir = finished
    m = metrics(run_dir)
    predicted, true, matrix = read_matrix(run_dir / "confusion_main.csv")
    assert predicted == true == ["5", "6", "7", "8", "9"]  # class names, in the task's order
    assert matrix.sum() == 179  # digits 5-9's test split
    assert np.trace(matrix) / matrix.sum() == pytest.approx(m["test/acc"], abs=1e-6)
    rows = read_csv(run_dir / "per_class_main.csv")
    assert [r["class"] for r in rows] == true and [int(r["support"]) for r in rows] == list(matrix.sum(1))
    for metric in ("precision", "recall", "f1"):
        assert np.mean([float(r[metric]) for r in rows]) == pytest.approx(m[f"test/{metric}"], abs=1e-5)
    assert (run_dir / "confusion_main.png").stat().st_size > 1000
    _, _, shifted = read_matrix(run_dir / "confusion_main.eval-noisy.csv")
    assert np.trace(shifted) / shifted.sum() == pytest.approx(m["eval/noisy/acc"], abs=1e-6)


def test_calibration_is_measured_at_test_and_after_a_temperature_fitted_on_validation(finished):
    m = metrics(finished[1])
    assert m["test/nll"] == pytest.approx(m["test/loss"], rel=1e-5)  # NLL is the test cross-entropy
    assert 0 <= m["test/ece"] <= 1 and 0 <= m["test/ece_calibrated"] <= 1 and m["test/temperature"] > 0
    assert {"eval/noisy/ece", "eval/noisy/nll", "eval/noisy/ece_calibrated"} <= set(m)


def test_wandb_holds_the_per_class_table_and_the_confusion_figure(finished):
    from wandb_reader import read_run

    run = read_run(finished[1])
    summary, files = run["summary"], Path(run["file"]).parent / "files"
    assert summary["test/main/per_class._type"] == "table-file" and summary["test/main/per_class.nrows"] == 5
    table = json.loads((files / summary["test/main/per_class.path"]).read_text())
    assert table["columns"] == ["class", "precision", "recall", "f1", "support"]
    assert [r[0] for r in table["data"]] == ["5", "6", "7", "8", "9"]
    assert summary["test/main/confusion._type"] == "images/separated"
    assert (files / summary["test/main/confusion.filenames"][0]).stat().st_size > 1000


def test_calibration_off_measures_none_of_it(tmp_path):
    import transferlab

    m = transferlab.train(*FAST, "eval.calibration=false", "trainer.max_epochs=1", run_dir=tmp_path / "run").metrics
    assert not any(k.rsplit("/", 1)[1] in ("ece", "nll", "temperature") for k in m if k.startswith("test/"))
    assert (tmp_path / "run" / "confusion_main.csv").is_file()


def test_tl_eval_and_tl_fuse_give_the_runs_matrix_and_calibration(finished):
    import transferlab

    root, run_dir = finished
    m = metrics(run_dir)
    evaluated = transferlab.evaluate(run_dir / "checkpoints" / "best.ckpt", run_dir=root / "eval")
    fused = transferlab.fuse("method=wise_ft", f"runs=[{run_dir},{run_dir}]", "fusion.alphas=[1.0]",
                             run_dir=root / "fuse")
    for out in (evaluated.run_dir, fused.run_dir):
        assert (read_matrix(out / "confusion_main.csv")[2] == read_matrix(run_dir / "confusion_main.csv")[2]).all()
        for key in ("test/ece", "test/nll", "test/ece_calibrated", "eval/noisy/ece"):
            assert metrics(out)[key] == pytest.approx(m[key], abs=1e-5), (out, key)


def test_report_has_an_ece_column(finished):
    import transferlab

    root, run_dir = finished
    transferlab.report(run_dir, out=root / "report")
    md = (root / "report" / "report.md").read_text()
    header = next(line for line in md.splitlines() if line.startswith("| setting"))
    assert "test/ece" in header
    row = next(r for r in read_csv(root / "report" / "report.csv") if r["kind"] == "row")
    assert math.isclose(float(row["test/ece"]), metrics(run_dir)["test/ece"], abs_tol=1e-9)
