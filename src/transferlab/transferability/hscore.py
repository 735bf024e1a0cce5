"""H-score (Bao et al., ICIP 2019) with Ledoit-Wolf shrinkage (Ibrahim et al., 2022, "Newer is not always
better"): how far apart the class means are, measured in units of the features' own spread,
tr(cov(f)⁻¹ cov(E[f | y])), the objective a linear classifier on f can reach. With high-dimensional features
and few samples the plain covariance is near singular and its inverse blows the score up along noise
directions; shrinking it toward a scaled identity by the Ledoit-Wolf amount (and the between-class part by the
same 1 - shrinkage) keeps the score a ranking of the features, not of their sample size.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from transferlab.transferability import SCORES
from transferlab.transferability.base import Score


def ledoit_wolf(x: np.ndarray) -> tuple[np.ndarray, float]:
    """(shrunk covariance, shrinkage) of centred samples x (N x D), as scikit-learn's LedoitWolf: the convex
    combination (1 - s)·S + s·μI of the empirical covariance S and μ = tr(S)/D with the s that minimises the
    expected squared error (Ledoit & Wolf 2004)."""
    n, d = x.shape
    emp = x.T @ x / n
    mu = np.trace(emp) / d
    spread = ((emp**2).sum() - d * mu**2) / d  # ‖S - μI‖²/D: how far S is from the target
    noise = (((x**2).T @ (x**2)).sum() / n - (emp**2).sum()) / (d * n)  # the estimate's own variance
    shrinkage = 0.0 if d == 1 or spread <= 0 else float(min(noise, spread) / spread)
    shrunk = (1 - shrinkage) * emp
    shrunk[np.diag_indices(d)] += shrinkage * mu
    return shrunk, shrinkage


@SCORES.register("hscore")
@dataclass(kw_only=True)
class HScore(Score):
    kind: str = "hscore"
    title = "H-score"

    def score(self, features, labels, source_probs=None) -> float:
        features, classes, _ = self.inputs(features, labels, source_probs)
        f = features - features.mean(axis=0)
        cov, shrinkage = ledoit_wolf(f)
        means = np.zeros((classes.max() + 1, f.shape[1]))
        np.add.at(means, classes, f)
        means /= np.bincount(classes)[:, None]
        g = means[classes]  # E[f | y] for each sample; centred, as f is
        between = (1 - shrinkage) * (g.T @ g) / len(g)
        return float(np.trace(np.linalg.pinv(cov, hermitian=True) @ between))
