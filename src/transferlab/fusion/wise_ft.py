"""WiSE-FT (Wortsman et al., 2022): interpolate the whole state dict between two runs of one
initialisation, θ(α) = (1-α)·θ_0 + α·θ_1, typically a linear probe (θ_0) and a fine-tuning (θ_1).
The fine-tuned end fits the target best; the intermediate α often keeps more of the pre-trained
model's robustness under distribution shift. α is chosen on validation, never on test."""
from __future__ import annotations

from transferlab.errors import ConfigError
from transferlab.fusion.base import Candidate, Fused, Method, best, interpolate


class WiseFT(Method):
    def __call__(self, ingredients, score, cfg) -> Fused:
        if len(ingredients) != 2:
            raise ConfigError(f"wise_ft interpolates between exactly 2 runs, θ_0 and θ_1 (runs=[LINEAR_PROBE_RUN,"
                              f"FINETUNED_RUN]); got {len(ingredients)}: {', '.join(str(i.dir) for i in ingredients)}")
        theta_0, theta_1 = (ing.state for ing in ingredients)
        members = [str(ing.dir) for ing in ingredients]
        candidates = [Candidate(f"alpha={alpha:g}", score(interpolate(theta_0, theta_1, alpha)), alpha=alpha,
                                members=members) for alpha in cfg.alphas]
        chosen = best(candidates, cfg.select_by)
        return Fused(candidates, chosen, interpolate(theta_0, theta_1, candidates[chosen].alpha))
