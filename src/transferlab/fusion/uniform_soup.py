"""Uniform soup (Wortsman et al., 2022): the mean of the weights of every fine-tuning of one initialisation."""
from __future__ import annotations

from dataclasses import dataclass

from transferlab.fusion import FUSIONS
from transferlab.fusion.base import Candidate, Fused, Method, average


def alone(ingredients, score) -> list[Candidate]:
    """Each ingredient scored on its own: the rows a soup is compared with."""
    return [Candidate(ing.label, score(ing.state), members=[str(ing.dir)]) for ing in ingredients]


@FUSIONS.register("uniform_soup")
@dataclass(kw_only=True)
class UniformSoup(Method):
    kind: str = "uniform_soup"
    recompute_bn: bool = False  # re-estimate BatchNorm statistics on the training images for every candidate

    def __call__(self, ingredients, score) -> Fused:
        candidates = alone(ingredients, score)
        state = average([ing.state for ing in ingredients])
        candidates.append(Candidate(f"uniform soup of {len(ingredients)}", score(state),
                                    members=[str(ing.dir) for ing in ingredients]))
        return Fused(candidates, len(candidates) - 1, state)
