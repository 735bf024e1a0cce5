"""Output ensembles: the runs' softmax probabilities averaged (or their logits, ``combine=logits``).
Unlike a soup it needs no shared initialisation, but it costs one forward pass per member, which
is reported beside its accuracy. It fits the module's contract: ``encode`` gives every member's
features, each task's head returns log-probabilities (so the loss is the ensemble's own NLL)."""
from __future__ import annotations

import math

import torch
from torch import nn

from transferlab.fusion.base import Candidate, Fused, Method


class EnsembleHead(nn.Module):
    def __init__(self, heads: list[nn.Module], combine: str):
        super().__init__()
        self.heads, self.combine = nn.ModuleList(heads), combine

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        logits = torch.stack([head(f) for head, f in zip(self.heads, features)])
        if self.combine == "logits":
            return logits.mean(0)
        return torch.logsumexp(torch.log_softmax(logits, dim=-1), dim=0) - math.log(len(self.heads))


class Ensemble(nn.Module):
    def __init__(self, members: list[nn.Module], combine: str = "probs"):
        super().__init__()
        self.members = nn.ModuleList(members)
        self.heads = nn.ModuleDict({task: EnsembleHead([m.heads[task] for m in members], combine)
                                    for task in members[0].heads})

    def encode(self, inputs) -> list[torch.Tensor]:
        return [m.encode(inputs) for m in self.members]

    def forward(self, inputs) -> dict[str, torch.Tensor]:
        features = self.encode(inputs)
        return {task: head(features) for task, head in self.heads.items()}


class OutputEnsemble(Method):
    averages_weights = False

    def __call__(self, ingredients, score, cfg) -> Fused:
        candidates = [Candidate(ing.label, score(ing.state), members=[str(ing.dir)]) for ing in ingredients]
        ensemble = Ensemble([score.model(ing.state) for ing in ingredients], cfg.combine)
        candidates.append(Candidate(f"ensemble of {len(ingredients)} ({cfg.combine})", score(ensemble),
                                    members=[str(ing.dir) for ing in ingredients]))
        return Fused(candidates, len(candidates) - 1, None, forward_passes=len(ingredients))
