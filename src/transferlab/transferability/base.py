"""What every transferability score shares: one signature, the same refusals for inputs that cannot give a
meaningful number, and the rank correlations a score is judged by (a score only has to order models the way
fine-tuning would, so it is compared with accuracies by rank, not by value).

Scores read features (the backbone's penultimate outputs on the target data), the target labels, and, for
those built on the source task's classes (LEEP, NCE), the source head's probabilities over its own classes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from transferlab.errors import ConfigError, DataError
from transferlab.settings import Settings


@dataclass(kw_only=True)
class Score(Settings):
    """``score(features, labels, source_probs)`` -> a number; higher = predicted to transfer better. Only
    scores of one kind on one target are comparable."""
    kind: str
    title: ClassVar[str] = "score"  # how its errors name it (the paper's name)
    needs_features: ClassVar[bool] = True
    needs_source_head: ClassVar[bool] = False  # needs the source model's own head outputs over its source classes

    def score(self, features: np.ndarray | None, labels: np.ndarray, source_probs: np.ndarray | None = None) -> float:
        raise NotImplementedError

    def inputs(self, features, labels, source_probs=None):
        """``(features, classes, source_probs)`` checked: float64 arrays (None where the score does not use
        them) and the labels as class indices 0..C-1, or an error naming the score and what is wrong."""
        name = self.title
        labels = np.asarray(labels)
        if labels.ndim != 1 or len(labels) == 0:
            raise DataError(f"{name}: labels must be a non-empty 1-D array of class labels, got shape {labels.shape}")
        names, classes = np.unique(labels, return_inverse=True)
        if len(names) < 2:
            raise DataError(f"{name} needs labels of at least 2 classes, got {len(names)} "
                            f"({', '.join(map(str, names))}): one class leaves nothing to tell apart")
        features = self._matrix(features, "features", len(labels)) if self.needs_features else None
        if self.needs_source_head:
            if source_probs is None:
                from transferlab.transferability import SCORES

                feature_scores = ", ".join(sorted(e.name for e in SCORES.entries() if not e.cls.needs_source_head))
                raise ConfigError(f"{name} needs the source model's own head outputs (its probabilities over the "
                                  f"source classes); it applies to transferlab source runs and timm models with a "
                                  f"classifier; scores that need only features: {feature_scores}")
            source_probs = self._matrix(source_probs, "source_probs", len(labels))
            sums = source_probs.sum(axis=1)
            bad = np.flatnonzero((source_probs < 0).any(axis=1) | (np.abs(sums - 1) > 1e-3))
            if len(bad):
                raise DataError(f"{name}: source_probs must be probabilities (each row >= 0 and summing to 1, the "
                                f"source head's softmax, not its logits); row {bad[0]} sums to {sums[bad[0]]:.4g}")
        else:
            source_probs = None
        return features, classes, source_probs

    def _matrix(self, value, what: str, rows: int) -> np.ndarray:
        if value is None:
            raise DataError(f"{self.title} needs {what} (an N x D array for the N labels), got None")
        try:
            value = np.asarray(value, dtype=np.float64)
        except (TypeError, ValueError):
            raise DataError(f"{self.title}: {what} must be a numeric array") from None
        if value.ndim != 2 or value.shape[1] == 0:
            raise DataError(f"{self.title}: {what} must be a 2-D array (one row per sample), got shape {value.shape}")
        if value.shape[0] != rows:
            raise DataError(f"{self.title}: {what} has {value.shape[0]} rows but there are {rows} labels; "
                            f"they must describe the same samples")
        if not np.isfinite(value).all():
            raise DataError(f"{self.title}: {what} has NaN or infinite values")
        return value


def onehot(index: np.ndarray, n: int) -> np.ndarray:
    """The N x n indicator matrix of class indices 0..n-1."""
    return (index[:, None] == np.arange(n)).astype(np.float64)


def joint(classes: np.ndarray, theta: np.ndarray) -> np.ndarray:
    """The empirical joint P(y, z) (C x Z) of target classes y and source predictions θ (N x Z, soft or one-hot):
    what LEEP and NCE both read the source head through."""
    return onehot(classes, classes.max() + 1).T @ theta / len(classes)


def weighted_tau(scores, accuracies) -> float:
    """Weighted Kendall τ (Vigna 2015): rank agreement in which swaps among the top models cost the most,
    the ones a ranking is used to pick."""
    from scipy.stats import weightedtau

    tau = weightedtau(np.asarray(scores, dtype=np.float64), np.asarray(accuracies, dtype=np.float64))
    return float(tau[0])  # the correlation; [0] reads it from every scipy's result type


def pearson(scores, accuracies) -> float:
    return float(np.corrcoef(np.asarray(scores, dtype=np.float64), np.asarray(accuracies, dtype=np.float64))[0, 1])
