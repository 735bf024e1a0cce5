"""Greedy soup (Wortsman et al., 2022): add runs in order of their validation score and keep each only
if the soup's validation score does not get worse, so it is never worse on validation than its best
ingredient."""
from __future__ import annotations

from dataclasses import dataclass

from transferlab.fusion import FUSIONS
from transferlab.fusion.base import Candidate, Fused, average, better, best
from transferlab.fusion.uniform_soup import UniformSoup, alone


@FUSIONS.register("greedy_soup")
@dataclass(kw_only=True)
class GreedySoup(UniformSoup):
    """A uniform soup of the runs that keep it improving (its settings are the uniform soup's)."""
    kind: str = "greedy_soup"

    def __call__(self, ingredients, score) -> Fused:
        by = self.select_by
        single = alone(ingredients, score)
        order, left = [], list(range(len(ingredients)))
        while left:  # best first (stable: ties keep their order)
            i = left[best([single[j] for j in left], by)]
            order.append(i)
            left.remove(i)
        soup, top, state = [order[0]], single[order[0]].metrics, ingredients[order[0]].state
        steps = [Candidate(f"step 0: {ingredients[order[0]].label}", top, members=[str(ingredients[order[0]].dir)],
                           kept=True)]
        for step, i in enumerate(order[1:], start=1):
            trial = average([ingredients[j].state for j in [*soup, i]])
            metrics = score(trial)
            kept = better(metrics[by], top[by], by)
            if kept:
                soup, top, state = [*soup, i], metrics, trial
            steps.append(Candidate(f"step {step}: +{ingredients[i].label}", metrics, kept=kept,
                                   members=[str(ingredients[j].dir) for j in (soup if kept else [*soup, i])]))
        chosen = len(single) + max(k for k, c in enumerate(steps) if c.kept)
        return Fused(single + steps, chosen, state)
