"""NCE (Tran et al., ICCV 2019): how much the source head's hard predictions z leave unknown about the target
label y, the conditional entropy H(Y | Z); with less left to learn, transfer should be easier. It is LEEP with
each source prediction rounded to its argmax, so it ignores the head's confidence.

    NCE = -H(Y | Z) = Σ_{y,z} P(y, z) log P(y | z),   with the empirical joint of (y_i, argmax_z θ_z(x_i))
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from transferlab.transferability import SCORES
from transferlab.transferability.base import Score, joint, onehot


@SCORES.register("nce")
@dataclass(kw_only=True)
class NCE(Score):
    kind: str = "nce"
    title = "NCE"
    needs_features = False
    needs_source_head = True

    def score(self, features, labels, source_probs=None) -> float:
        _, classes, theta = self.inputs(features, labels, source_probs)
        p = joint(classes, onehot(theta.argmax(axis=1), theta.shape[1]))
        marginal = np.broadcast_to(p.sum(axis=0), p.shape)
        seen = p > 0
        return float((p[seen] * np.log(p[seen] / marginal[seen])).sum())
