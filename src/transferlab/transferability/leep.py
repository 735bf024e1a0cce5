"""LEEP (Nguyen et al., ICML 2020): treat the source head as a soft relabelling of the target data, learn the
empirical map from source classes z to target classes y, and score how well "predict y through z" does. It
needs nothing but one forward pass of the source model with its own head; higher means the source task's
classes already carve the target data the way its labels do.

    P(y, z) = 1/N Σ_i θ_z(x_i) [y_i = y],   P(y | z) = P(y, z) / P(z),   LEEP = 1/N Σ_i log Σ_z P(y_i | z) θ_z(x_i)
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from transferlab.transferability import SCORES
from transferlab.transferability.base import Score, joint


@SCORES.register("leep")
@dataclass(kw_only=True)
class LEEP(Score):
    kind: str = "leep"
    title = "LEEP"
    needs_features = False
    needs_source_head = True

    def score(self, features, labels, source_probs=None) -> float:
        _, classes, theta = self.inputs(features, labels, source_probs)
        p = joint(classes, theta)
        marginal = p.sum(axis=0)
        conditional = np.divide(p, marginal, out=np.zeros_like(p), where=marginal > 0)  # P(y | z)
        expected = (theta * conditional[classes]).sum(axis=1)  # > 0: any z with θ_z(x_i) > 0 has P(y_i, z) > 0
        return float(np.log(expected).mean())
