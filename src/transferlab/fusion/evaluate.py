"""Score candidate weights the way a run tests: the reference run's model rebuilt from its checkpoint
(``models.from_checkpoint``), its data built by ``run.build``, and the Trainer's own validate and test
loops, so a fused model's numbers and ``tl-eval`` of its checkpoint are the same computation (α = 1 is
exactly the fine-tuned run's test)."""
from __future__ import annotations

import copy
import math
from collections.abc import Mapping

import torch
from torch import nn

from transferlab import metrics as names
from transferlab import run


class Evaluator:
    """``evaluator(weights)``: metrics of a state dict (loaded into the one model, in place) or of a
    model (an ensemble); ``recompute_bn``: BatchNorm statistics are re-estimated on the training
    images (evaluation transform, fixed order) first, since averaged weights never saw averaged ones."""

    def __init__(self, plan, loaded, recompute_bn: bool = False):
        self.module, self.datamodule, self.eval_sets = run.build(plan, loaded)
        self.trainer = run.create_trainer(plan, plan.run_dir)
        self.base, self.recompute_bn = self.module.model, recompute_bn
        self.scored: list[tuple[dict, dict]] = []  # (metrics, confusion matrices) of every model scored

    def _load(self, model: nn.Module, state: Mapping) -> nn.Module:
        model.load_state_dict(state)
        if self.recompute_bn:
            torch.optim.swa_utils.update_bn(self.datamodule.plain_loader(self.module.streams[0], "train"), model)
        return model

    def model(self, state: Mapping) -> nn.Module:
        """A model of its own with these weights (an ensemble member)."""
        return self._load(copy.deepcopy(self.base), state)

    def load(self, state: Mapping) -> nn.Module:
        """The module's own model with these weights as scored (BatchNorm statistics re-estimated when
        asked): what fused.ckpt holds."""
        return self._load(self.base, state)

    def __call__(self, weights) -> dict:
        self.module.model = weights if isinstance(weights, nn.Module) else self._load(self.base, weights)
        try:
            self.module.val_acc_best = torch.tensor(-math.inf)  # a fresh buffer: the last one is an inference tensor
            with self.module.collecting():  # its logits give run.test the temperature: no second pass
                self.trainer.validate(self.module, datamodule=self.datamodule, verbose=False)
            metrics = {k: float(v) for k, v in self.trainer.callback_metrics.items()
                       if k.startswith("val/") and k != names.BEST}
            tables = {}
            metrics.update(run.test(self.trainer, self.module, self.datamodule, self.eval_sets, tables=tables,
                                    validated=True))
        finally:
            self.module.model = self.base
        self.scored.append((metrics, tables))
        return metrics

    def tables(self, metrics: dict) -> dict:
        """The confusion matrices of the model these ``metrics`` (as returned) were scored for."""
        return next(tables for scored, tables in self.scored if scored is metrics)
