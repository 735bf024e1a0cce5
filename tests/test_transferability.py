"""Transferability scores (``transferlab.transferability``): LogME's evidence against the Gaussian marginal it
stands for, written densely (N < D included, where the SVD form has to count the directions the data does not
reach), every score preferring separable features to noise, and each refusal naming the score."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import multivariate_normal

from transferlab.errors import ConfigError, DataError
from transferlab.transferability import SCORES
from transferlab.transferability.base import weighted_tau
from transferlab.transferability.logme import log_evidence, maximise


def dense_evidence(features, y, alpha, beta):
    """log p(y) with y ~ N(0, β⁻¹ I_N + α⁻¹ F Fᵀ): w ~ N(0, α⁻¹ I_D) and the noise integrated out."""
    n = len(y)
    return multivariate_normal(np.zeros(n), np.eye(n) / beta + features @ features.T / alpha).logpdf(y)


def regression(n, d, seed):
    """Features and one target with some signal, so the maximising α and β lie inside (0, ∞)."""
    rng = np.random.default_rng(seed)
    features = rng.normal(size=(n, d))
    return features, 0.3 * features @ rng.normal(size=d) + rng.normal(size=n)


@pytest.mark.parametrize("n,d", [(60, 10), (12, 40)])
@pytest.mark.parametrize("alpha,beta", [(0.7, 3.0), (25.0, 0.4)])  # α != 1: log α terms must not vanish
def test_logme_evidence_is_the_gaussian_marginal(n, d, alpha, beta):
    features, y = regression(n, d, seed=n)
    onehot = (np.random.default_rng(1).integers(0, 3, n) == 0).astype(np.float64)
    for target in (y, onehot):
        assert log_evidence(features, target, alpha, beta) == pytest.approx(dense_evidence(features, target, alpha,
                                                                                           beta), rel=1e-6)


@pytest.mark.parametrize("n,d", [(60, 10), (12, 40)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_logme_fixed_point_is_a_maximum_of_the_dense_evidence(n, d, seed):
    features, y = regression(n, d, seed)
    (alpha,), (beta,), (evidence,) = maximise(features, y)
    best = dense_evidence(features, y, alpha, beta)
    assert evidence == pytest.approx(best, rel=1e-6)
    for a in (0.5, 1, 2):
        for b in (0.5, 1, 2):
            assert dense_evidence(features, y, alpha * a, beta * b) <= best + 1e-6 * abs(best), (a, b)


def task(separable, seed=0, n=120, classes=4, d=16, source_classes=10):
    """(features, labels, source_probs): separable = each class its own direction and the source head sure of a
    source class per target class; otherwise noise and random probabilities."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % classes
    if separable:
        features = 5 * np.eye(classes, d)[labels] + 0.1 * rng.normal(size=(n, d))
        logits = 8 * np.eye(classes, source_classes, k=2)[labels] + 0.1 * rng.normal(size=(n, source_classes))
        probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    else:
        features = rng.normal(size=(n, d))
        probs = rng.dirichlet(np.ones(source_classes), size=n)
    return features, labels, probs


@pytest.mark.parametrize("kind", ["logme", "leep", "nce", "hscore"])
def test_separable_features_score_above_random_ones(kind):
    score = SCORES.entry(kind).cls()
    assert score.score(*task(separable=True)) > score.score(*task(separable=False))


def test_weighted_tau_of_a_ranking_against_itself_is_one():
    scores = [0.3, -1.2, 4.0, 2.5, 0.9]
    assert weighted_tau(scores, scores) == pytest.approx(1.0)
    assert weighted_tau(scores, [-s for s in scores]) == pytest.approx(-1.0)


FEATURES, LABELS, PROBS = task(separable=True)
BAD = {  # name -> (kinds, arguments, error, what the message says)
    "one class": (("logme", "leep", "nce", "hscore"), (FEATURES, np.zeros(len(LABELS), int), PROBS), DataError,
                  "needs labels of at least 2 classes, got 1"),
    "labels shorter than features": (("logme", "hscore"), (FEATURES, LABELS[:-5], PROBS), DataError,
                                     "features has 120 rows but there are 115 labels"),
    "labels shorter than source_probs": (("leep", "nce"), (None, LABELS[:-5], PROBS), DataError,
                                         "source_probs has 120 rows but there are 115 labels"),
    "no source head": (("leep", "nce"), (FEATURES, LABELS, None), ConfigError,
                       "needs the source model's own head outputs (its probabilities over the source classes); "
                       "it applies to transferlab source runs and timm models with a classifier; scores that need "
                       "only features: hscore, logme"),
    "logits for probabilities": (("leep", "nce"), (None, LABELS, np.log(PROBS)), DataError,
                                 "source_probs must be probabilities"),
    "no features": (("logme", "hscore"), (None, LABELS, PROBS), DataError, "needs features"),
    "non-finite features": (("logme", "hscore"), (np.where(FEATURES > 4, np.nan, FEATURES), LABELS, None), DataError,
                            "features has NaN or infinite values"),
}
CASES = [(kind, bad) for bad, (kinds, *_) in BAD.items() for kind in kinds]


@pytest.mark.parametrize("kind,bad", CASES, ids=[f"{k}-{b}" for k, b in CASES])
def test_each_bad_input_is_one_clear_error_naming_the_score(kind, bad):
    _, args, error, says = BAD[bad]
    score = SCORES.entry(kind).cls()
    with pytest.raises(error) as e:
        score.score(*args)
    message = str(e.value)
    assert message.startswith(score.title) and says in message, message


def test_the_registry_lists_the_four_scores_and_which_need_the_source_head():
    assert sorted(SCORES.names()) == ["hscore", "leep", "logme", "nce"]
    assert {e.name for e in SCORES.entries() if e.cls.needs_source_head} == {"leep", "nce"}
    assert SCORES.parse({"kind": "logme", "tol": 1e-4}, "rank.scores").tol == 1e-4
