"""The modules that add the tasks' losses up (``multitask.loss_weighting``, chosen in ``multitask.py``)."""
from __future__ import annotations

import torch
from torch import nn

from transferlab.tasks import Task


class FixedWeights(nn.Module):
    """Total loss = sum of w_i * L_i with the configured weights.

    ``active`` lists the tasks with a non-zero weight: the module computes no training loss for the
    others, so their heads get no gradient and the optimizer (weight decay included) leaves them be.
    """

    def __init__(self, tasks: list[Task]):
        super().__init__()
        self.weights = {t.name: t.weight for t in tasks}
        self.active = [t.name for t in tasks if t.weight > 0]

    def forward(self, losses: dict[str, torch.Tensor]) -> torch.Tensor:
        return sum(self.weights[name] * loss for name, loss in losses.items() if name in self.active)

    def effective_weights(self) -> dict[str, float]:
        return dict(self.weights)


class UncertaintyWeights(nn.Module):
    """Kendall et al. (2018): sum of L_i / (2 exp(s_i)) + s_i / 2, with s_i = log sigma_i^2 learned.

    Tasks configured with weight 0 stay out of the sum, so a switched-off task stays off.
    """

    def __init__(self, tasks: list[Task]):
        super().__init__()
        self.active = [t.name for t in tasks if t.weight > 0]
        self.log_vars = nn.ParameterDict({name: nn.Parameter(torch.zeros(())) for name in self.active})

    def forward(self, losses: dict[str, torch.Tensor]) -> torch.Tensor:
        return sum(loss / (2 * self.log_vars[name].exp()) + self.log_vars[name] / 2
                   for name, loss in losses.items() if name in self.log_vars)

    def effective_weights(self) -> dict[str, float]:
        return {name: float(0.5 * torch.exp(-s.detach())) for name, s in self.log_vars.items()}
