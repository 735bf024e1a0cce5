"""Fine-tuning regularisers (the ``regularizer`` group): a term added to the training loss, logged as
``train/reg_loss``, with any strategy.

L2-SP (Li et al., 2018) pulls the trainable backbone towards the source weights instead of towards
zero, so ordinary weight decay is off for those parameters (as in the reference implementation), and
the new heads get a plain L2 term of their own (``head_weight``). BSS (Chen et al., 2019) penalises the
``k`` smallest singular values of each batch's feature matrix: fine-tuning on little data inflates
those directions, which carry what does not transfer. torch is imported inside the factories.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cache

from transferlab.registry import Registry
from transferlab.settings import NON_NEGATIVE, POSITIVE_INT, Settings, setting

REGULARIZERS = Registry("regularizer", "regularizer", modules=("transferlab.regularizers",))


@dataclass(kw_only=True)
class Regularizer(Settings):
    kind: str
    needs_source = False  # True: it needs source weights to pull towards

    def decays(self, part: str) -> bool:
        """Whether ordinary weight decay still applies to ``backbone``, ``adapters`` or ``heads``."""
        return True

    def create(self, model, added=lambda name: False):
        """The loss term, an ``nn.Module`` called as ``term(model, features)`` (a list of (batch, width)
        feature matrices; token-level features are not among them), or None. ``added``: backbone parameters a strategy added, with no source value."""
        return None


@REGULARIZERS.register("none")
@dataclass(kw_only=True)
class NoRegularizer(Regularizer):
    kind: str = "none"


@REGULARIZERS.register("l2_sp")
@dataclass(kw_only=True)
class L2SP(Regularizer):
    kind: str = "l2_sp"
    weight: float = setting(0.01, NON_NEGATIVE, tune=True)  # alpha: (alpha / 2) ||w - w_source||^2 over the backbone
    head_weight: float = setting(0.01, NON_NEGATIVE, tune=True)  # beta: (beta / 2) ||w||^2 over the heads
    needs_source = True

    def decays(self, part):
        return not ((part == "backbone" and self.weight > 0) or (part == "heads" and self.head_weight > 0))

    def create(self, model, added=lambda name: False):
        return _L2SP(model, added, self.weight, self.head_weight)


@REGULARIZERS.register("bss")
@dataclass(kw_only=True)
class BSS(Regularizer):
    kind: str = "bss"
    weight: float = setting(0.001, NON_NEGATIVE, tune=True)  # eta: eta * sum of the k smallest squared singular values
    k: int = setting(1, POSITIVE_INT)

    def create(self, model, added=lambda name: False):
        return _BSS(self.weight, self.k)


@cache
def _modules():
    """The loss terms' classes, defined once torch is needed."""
    import torch

    class L2SPTerm(torch.nn.Module):
        """The source weights as buffers that move with the module but stay out of its checkpoints."""

        def __init__(self, model, added, weight: float, head_weight: float):
            super().__init__()
            self.names = [n for n, _ in model.backbone.named_parameters() if not added(n)] if weight > 0 else []
            params = dict(model.backbone.named_parameters())
            for i, name in enumerate(self.names):
                self.register_buffer(f"source{i}", params[name].detach().clone(), persistent=False)
            self.weight, self.head_weight = weight, head_weight

        def forward(self, model, features):
            params = dict(model.backbone.named_parameters())
            total = torch.zeros((), device=next(model.parameters()).device)
            for i, name in enumerate(self.names):
                if params[name].requires_grad:  # a frozen tensor is the source's: its term is zero
                    total = total + (params[name] - getattr(self, f"source{i}")).float().pow(2).sum() * (self.weight / 2)
            if self.head_weight > 0:
                total = total + sum(p.float().pow(2).sum() for p in model.heads.parameters()) * (self.head_weight / 2)
            return total

    class BSSTerm(torch.nn.Module):
        def __init__(self, weight: float, k: int):
            super().__init__()
            self.weight, self.k = weight, k

        def forward(self, model, features):
            total = torch.zeros((), device=next(model.parameters()).device)
            for f in features:
                values = torch.linalg.svdvals(f.float())  # descending
                total = total + values[-min(self.k, values.numel()):].pow(2).sum()
            return total * self.weight

    return L2SPTerm, BSSTerm


def _L2SP(*args):
    return _modules()[0](*args)


def _BSS(*args):
    return _modules()[1](*args)


__all__ = ["REGULARIZERS", "Regularizer"]
