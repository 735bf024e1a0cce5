"""Model soups (Wortsman et al., 2022): average the weights of several fine-tunings of one
initialisation. ``uniform_soup`` averages all of them; ``greedy_soup`` adds runs in order of their
validation score and keeps each only if the soup's validation score does not drop, so it is never
worse on validation than its best ingredient."""
from __future__ import annotations

from transferlab.fusion.base import Candidate, Fused, Method, average


def _alone(ingredients, score) -> list[Candidate]:
    return [Candidate(ing.label, score(ing.state), members=[str(ing.dir)]) for ing in ingredients]


class UniformSoup(Method):
    def __call__(self, ingredients, score, cfg) -> Fused:
        candidates = _alone(ingredients, score)
        state = average([ing.state for ing in ingredients])
        candidates.append(Candidate(f"uniform soup of {len(ingredients)}", score(state),
                                    members=[str(ing.dir) for ing in ingredients]))
        return Fused(candidates, len(candidates) - 1, state)


class GreedySoup(Method):
    def __call__(self, ingredients, score, cfg) -> Fused:
        alone = _alone(ingredients, score)
        order = sorted(range(len(ingredients)), key=lambda i: -alone[i].metrics[cfg.select_by])  # stable: ties keep order
        soup, best, state = [order[0]], alone[order[0]].metrics, ingredients[order[0]].state
        steps = [Candidate(f"step 0: {ingredients[order[0]].label}", best, members=[str(ingredients[order[0]].dir)],
                           kept=True)]
        for step, i in enumerate(order[1:], start=1):
            trial = average([ingredients[j].state for j in [*soup, i]])
            metrics = score(trial)
            kept = metrics[cfg.select_by] >= best[cfg.select_by]
            if kept:
                soup, best, state = [*soup, i], metrics, trial
            steps.append(Candidate(f"step {step}: +{ingredients[i].label}", metrics, kept=kept,
                                   members=[str(ingredients[j].dir) for j in (soup if kept else [*soup, i])]))
        chosen = len(alone) + max(k for k, c in enumerate(steps) if c.kept)
        return Fused(alone + steps, chosen, state)
