"""Output ensembles: the runs' softmax probabilities averaged (or their logits, ``combine=logits``).
Unlike a soup it needs no shared initialisation, but it costs one forward pass per member, which
is reported beside its accuracy. It fits the module's contract: ``encode`` gives every member's
features, each task's head returns log-probabilities (so the loss is the ensemble's own NLL)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from transferlab.fusion import FUSIONS
from transferlab.fusion.base import Candidate, Fused, Method
from transferlab.fusion.uniform_soup import alone


def ensemble_model(members: list, combine: str):
    """One module whose tasks' outputs combine the members' (torch from here)."""
    import torch
    from torch import nn

    class EnsembleHead(nn.Module):
        def __init__(self, heads: list[nn.Module]):
            super().__init__()
            self.heads = nn.ModuleList(heads)

        def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
            logits = torch.stack([head(f) for head, f in zip(self.heads, features)])
            if combine == "logits":
                return logits.mean(0)
            return torch.logsumexp(torch.log_softmax(logits, dim=-1), dim=0) - math.log(len(self.heads))

    class Ensemble(nn.Module):
        def __init__(self):
            super().__init__()
            self.members = nn.ModuleList(members)
            self.heads = nn.ModuleDict({task: EnsembleHead([m.heads[task] for m in members])
                                        for task in members[0].heads})

        def encode(self, inputs) -> list[torch.Tensor]:
            return [m.encode(inputs) for m in self.members]

        def forward(self, inputs) -> dict[str, torch.Tensor]:
            features = self.encode(inputs)
            return {task: head(features) for task, head in self.heads.items()}

    return Ensemble()


@FUSIONS.register("ensemble")
@dataclass(kw_only=True)
class OutputEnsemble(Method):
    kind: str = "ensemble"
    combine: Literal["probs", "logits"] = "probs"  # mean of softmax outputs | mean of logits
    averages_weights = False

    def __call__(self, ingredients, score) -> Fused:
        candidates = alone(ingredients, score)
        ensemble = ensemble_model([score.model(ing.state) for ing in ingredients], self.combine)
        candidates.append(Candidate(f"ensemble of {len(ingredients)} ({self.combine})", score(ensemble),
                                    members=[str(ing.dir) for ing in ingredients]))
        return Fused(candidates, len(candidates) - 1, None, forward_passes=len(ingredients))
