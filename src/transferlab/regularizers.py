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

    def create(self, model, source=None, updates=lambda model: [], added=lambda name: False):
        """The loss term, an ``nn.Module`` called as ``term(model, features)`` (a list of (batch, width)
        feature matrices; token-level features are not among them), or None. ``source``: the backbone with the
        weights the run started from (default: the model's own, before training); ``updates(model)``: what a
        strategy's adapters add to the weights they wrap; ``added(name)``: the adapters' own tensors."""
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

    def create(self, model, source=None, updates=lambda model: [], added=lambda name: False):
        return _terms()[0](model, source if source is not None else model.backbone, updates, added, self.weight,
                           self.head_weight)


@REGULARIZERS.register("bss")
@dataclass(kw_only=True)
class BSS(Regularizer):
    kind: str = "bss"
    weight: float = setting(0.001, NON_NEGATIVE, tune=True)  # eta: eta * sum of the k smallest squared singular values
    k: int = setting(1, POSITIVE_INT)

    def create(self, model, source=None, updates=lambda model: [], added=lambda name: False):
        return _terms()[1](self.weight, self.k)


@cache
def _terms():
    """The loss terms' classes, defined once torch is needed."""
    import torch

    class L2SPTerm(torch.nn.Module):
        """The source weights are kept as plain tensors, not buffers: out of checkpoints, and not broadcast by
        DDP at every step. A parameter an adapter wraps is named ``x.base_layer.weight``, the source's
        ``x.weight``; the adapters themselves have no source value, so their update to the weight they wrap
        (``updates``: merged minus source) is pulled to zero, which is the same distance."""

        def __init__(self, model, source, updates, added, weight: float, head_weight: float):
            super().__init__()
            plain = lambda name: name.replace(".base_layer.", ".")  # noqa: E731
            reference = {plain(n): p for n, p in source.named_parameters() if not added(n)}
            # (parameter, its source value): the model's Parameter objects stay the same when it moves devices
            self.pairs = [] if weight <= 0 else [
                (p, reference[plain(name)].detach().clone())
                for name, p in model.backbone.named_parameters() if not added(name) and plain(name) in reference]
            self.updates, self.weight, self.head_weight = updates, weight, head_weight

        def forward(self, model, features):
            device = next(model.parameters()).device
            total = torch.zeros((), device=device)
            if self.weight > 0:
                for i, (param, value) in enumerate(self.pairs):
                    if param.requires_grad:  # a frozen tensor is the source's: its term is zero
                        if value.device != device:
                            self.pairs[i] = (param, value := value.to(device))
                        total = total + (param - value).float().pow(2).sum() * (self.weight / 2)
                for delta in self.updates(model):
                    total = total + delta.float().pow(2).sum() * (self.weight / 2)
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
                if values.numel() > self.k:  # a batch of k rows or fewer has nothing but its own scale to shrink
                    total = total + values[-self.k:].pow(2).sum()
            return total * self.weight

    return L2SPTerm, BSSTerm


__all__ = ["REGULARIZERS", "Regularizer"]
