"""WiSE-FT (Wortsman et al., 2022): interpolate the whole state dict between two runs of one
initialisation, θ(α) = (1-α)·θ_0 + α·θ_1, typically a linear probe (θ_0) and a fine-tuning (θ_1).
The fine-tuned end fits the target best; the intermediate α often keeps more of the pre-trained
model's robustness under distribution shift. α is chosen on validation, never on test."""
from __future__ import annotations

from dataclasses import dataclass

from transferlab.errors import ConfigError
from transferlab.fusion import FUSIONS
from transferlab.fusion.base import Candidate, Fused, Method, best, interpolate
from transferlab.settings import setting


@FUSIONS.register("wise_ft")
@dataclass(kw_only=True)
class WiseFT(Method):
    kind: str = "wise_ft"
    alphas: list[float] = setting((0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0),
                                  (lambda v: len(v) > 0 and all(0 <= a <= 1 for a in v),
                                   "a non-empty list of numbers in [0, 1] (0 = runs[0], 1 = runs[1])"))
    recompute_bn: bool = False  # re-estimate BatchNorm statistics on the training images for every candidate
    along_alpha = True

    def check_ingredients(self, ingredients) -> None:
        if len(ingredients) != 2:
            raise ConfigError(f"wise_ft interpolates between exactly 2 runs, θ_0 and θ_1 (runs=[LINEAR_PROBE_RUN,"
                              f"FINETUNED_RUN]); got {len(ingredients)}: {', '.join(str(i.dir) for i in ingredients)}")

    def __call__(self, ingredients, score) -> Fused:
        theta_0, theta_1 = (ing.state for ing in ingredients)
        members = [str(ing.dir) for ing in ingredients]
        candidates = [Candidate(f"alpha={alpha:g}", score(interpolate(theta_0, theta_1, alpha)), alpha=alpha,
                                members=members) for alpha in self.alphas]
        chosen = best(candidates, self.select_by)
        return Fused(candidates, chosen, interpolate(theta_0, theta_1, candidates[chosen].alpha))
