"""LogME (You et al., ICML 2021): how well a linear model on the features can explain the labels, measured
by the Bayesian evidence, so over-fitting is priced in and no model has to be trained. For each class c, the
one-hot column y = F w + ε with w ~ N(0, α⁻¹ I_D), ε ~ N(0, β⁻¹ I_N); α and β maximise the evidence
p(y | α, β) by MacKay's fixed point, and the score is the mean over classes of the maximum divided by N.

Everything is computed from the thin SVD F = U S Vᵀ with k = min(N, D) singular values, which keeps two terms
right when N < D (few samples, wide features): log det(α I_D + β FᵀF) has D - k eigenvalues equal to α besides
the k that the data moves, and the residual ‖F m - y‖² keeps the part of y outside U's columns.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from transferlab.settings import POSITIVE, POSITIVE_INT, setting
from transferlab.transferability import SCORES
from transferlab.transferability.base import Score, onehot

_LIMIT = 1e12  # α, β stay in [1/_LIMIT, _LIMIT]: a perfect fit or features orthogonal to y sends one to infinity


def _spectrum(features, y):
    """(s², (Uᵀy)², the part of ‖y‖² outside U's columns) of y's columns: all the evidence needs of F and y."""
    u, s, _ = np.linalg.svd(features, full_matrices=False)
    y = y.reshape(len(y), -1)
    z2 = (u.T @ y) ** 2
    return s**2, z2, np.maximum((y**2).sum(axis=0) - z2.sum(axis=0), 0.0)


def _terms(s2, z2, rest, alpha, beta):
    """(γ, mᵀm, ‖F m - y‖², Σ log(α + β s²)) for each column, α and β one per column."""
    denom = alpha + beta * s2[:, None]
    gamma = (beta * s2[:, None] / denom).sum(axis=0)
    m2 = (beta**2 * s2[:, None] * z2 / denom**2).sum(axis=0)
    res = (alpha**2 * z2 / denom**2).sum(axis=0) + rest
    return gamma, m2, res, np.log(denom).sum(axis=0)


def _evidence(s2, z2, rest, n, d, alpha, beta):
    _, m2, res, logdet = _terms(s2, z2, rest, alpha, beta)
    logdet = logdet + (d - len(s2)) * np.log(alpha)
    return (d / 2 * np.log(alpha) + n / 2 * np.log(beta) - n / 2 * np.log(2 * np.pi)
            - beta / 2 * res - alpha / 2 * m2 - logdet / 2)


def log_evidence(features: np.ndarray, y: np.ndarray, alpha: float, beta: float) -> float:
    """log p(y | F, α, β) for one target column y (N,): the quantity LogME maximises."""
    n, d = features.shape
    return float(_evidence(*_spectrum(features, y), n, d, np.array([alpha]), np.array([beta]))[0])


def maximise(features: np.ndarray, y: np.ndarray, tol: float = 1e-6, max_iter: int = 1000):
    """(α, β, log evidence) at the fixed point, one each per column of y (N or N x C)."""
    n, d = features.shape
    s2, z2, rest = _spectrum(features, y)
    alpha, beta = np.ones(z2.shape[1]), np.ones(z2.shape[1])
    for _ in range(max_iter):
        gamma, m2, res, _ = _terms(s2, z2, rest, alpha, beta)
        new_alpha = np.clip(gamma / np.maximum(m2, 1 / _LIMIT**2), 1 / _LIMIT, _LIMIT)
        new_beta = np.clip((n - gamma) / np.maximum(res, 1 / _LIMIT**2), 1 / _LIMIT, _LIMIT)
        change = max(np.max(np.abs(new_alpha - alpha) / alpha), np.max(np.abs(new_beta - beta) / beta))
        alpha, beta = new_alpha, new_beta
        if change < tol:
            break
    return alpha, beta, _evidence(s2, z2, rest, n, d, alpha, beta)


@SCORES.register("logme")
@dataclass(kw_only=True)
class LogME(Score):
    kind: str = "logme"
    tol: float = setting(1e-6, POSITIVE)  # the fixed point stops when α and β change by less than this, relatively
    max_iter: int = setting(1000, POSITIVE_INT)
    title = "LogME"

    def score(self, features, labels, source_probs=None) -> float:
        features, classes, _ = self.inputs(features, labels, source_probs)
        _, _, evidence = maximise(features, onehot(classes, classes.max() + 1), self.tol, self.max_iter)
        return float(evidence.mean() / len(features))
