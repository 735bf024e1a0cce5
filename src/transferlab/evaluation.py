"""What a test pass tells beyond acc / precision / recall / F1, asked of a transfer result first: which
classes fail (per-class precision, recall and F1, the confusion matrix) and whether its probabilities can
be trusted (ECE and NLL, before and after a temperature fitted on validation; Guo et al. 2017).

Everything is computed from the logits and labels a pass collected (``Outputs``, gathered over DDP
ranks), in float64 numpy, the same way for tl-train, tl-eval and tl-fuse.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from transferlab.settings import POSITIVE_INT, Settings, setting


@dataclass(kw_only=True)
class Evaluation(Settings):
    """The ``eval`` node of a run's config."""
    calibration: bool = True  # ECE and NLL at test, a temperature fitted on validation and both after it
    bins: int = setting(15, POSITIVE_INT)  # ECE's equal-width confidence bins


def create_outputs():
    """A torchmetrics state that keeps a pass's logits and labels, concatenated over ranks at compute."""
    import torch
    from torchmetrics import Metric
    from torchmetrics.utilities import dim_zero_cat

    class Outputs(Metric):
        full_state_update = False

        def __init__(self):
            super().__init__()
            self.add_state("logits", default=[], dist_reduce_fx="cat")
            self.add_state("labels", default=[], dist_reduce_fx="cat")

        def update(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
            self.logits.append(logits.detach().float())
            self.labels.append(labels.detach().long())

        def compute(self) -> tuple[np.ndarray, np.ndarray]:
            return (dim_zero_cat(self.logits).cpu().double().numpy(), dim_zero_cat(self.labels).cpu().numpy())

    return Outputs()


def confusion(logits: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts: row = true class, column = predicted class."""
    predicted = logits.argmax(1)
    return np.bincount(labels * num_classes + predicted, minlength=num_classes ** 2).reshape(num_classes, num_classes)


class PerClass(NamedTuple):
    precision: np.ndarray
    recall: np.ndarray
    f1: np.ndarray
    support: np.ndarray  # test items of the class


def per_class(matrix: np.ndarray) -> PerClass:
    """A class never predicted has precision 0, one never present recall 0 (torchmetrics' zero division)."""
    hits = np.diag(matrix).astype(float)
    predicted, support = matrix.sum(0), matrix.sum(1)
    precision = np.divide(hits, predicted, out=np.zeros_like(hits), where=predicted > 0)
    recall = np.divide(hits, support, out=np.zeros_like(hits), where=support > 0)
    total = precision + recall
    f1 = np.divide(2 * precision * recall, total, out=np.zeros_like(hits), where=total > 0)
    return PerClass(precision, recall, f1, support)


def log_softmax(logits: np.ndarray) -> np.ndarray:
    from scipy.special import log_softmax as scipy_log_softmax

    return scipy_log_softmax(np.asarray(logits, dtype=np.float64), axis=1)


def nll(logits: np.ndarray, labels: np.ndarray) -> float:
    """Mean negative log-likelihood of the true class (the test cross-entropy, in float64)."""
    return float(-log_softmax(logits)[np.arange(len(labels)), labels].mean())


def ece(probabilities: np.ndarray, labels: np.ndarray, bins: int = 15) -> float:
    """Expected calibration error: the items binned by confidence (top probability) into ``bins`` equal
    widths of (0, 1]; the mean over items of |accuracy - mean confidence| of their bin."""
    confidence, predicted = probabilities.max(1), probabilities.argmax(1)
    which = np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)
    count = np.bincount(which, minlength=bins)
    gap = np.bincount(which, (predicted == labels).astype(float), bins) - np.bincount(which, confidence, bins)
    return float(np.abs(gap).sum() / max(1, count.sum()))


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The T > 0 that minimises the NLL of ``logits / T`` (one scalar: accuracy is unchanged), searched
    over log T in [-5, 5] (T from 0.007 to 148)."""
    from scipy.optimize import minimize_scalar

    found = minimize_scalar(lambda t: nll(logits / np.exp(t), labels), bounds=(-5.0, 5.0), method="bounded",
                            options={"xatol": 1e-6})
    return float(np.exp(found.x))


def calibration(logits: np.ndarray, labels: np.ndarray, bins: int, validation=None) -> dict[str, float]:
    """ECE and NLL of a test pass; with ``validation`` (its logits, labels) also the temperature fitted
    there and both after dividing the test logits by it."""
    out = {"ece": ece(np.exp(log_softmax(logits)), labels, bins), "nll": nll(logits, labels)}
    if validation is not None and len(validation[1]):
        t = fit_temperature(*validation)
        out.update({"temperature": t, "ece_calibrated": ece(np.exp(log_softmax(logits / t)), labels, bins),
                    "nll_calibrated": nll(logits / t, labels)})
    return out
