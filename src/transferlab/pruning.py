"""Pruning for a run that is a trial of an Optuna search (``optuna_trial``, set by the sweeper).

After each validation epoch the run reports the objective's per-epoch value to its trial; when the
study's pruner says stop, it writes ``pruned.json`` (never metrics.json) and raises ``Pruned``, which
the sweeper tells Optuna as PRUNED. Every rank stops together; rank 0 talks to the study.
"""
from __future__ import annotations

from pathlib import Path

import optuna
from pytorch_lightning import Callback

from transferlab import metrics as names
from transferlab.runs import RunDir
from transferlab.errors import ConfigError
from transferlab.studies import load_trial


class Pruned(optuna.TrialPruned):
    """Stopped by the study's pruner: not a failure."""


class OptunaPruning(Callback):
    def __init__(self, spec, objective: str, run_dir: Path, describe: dict):
        self.spec, self.metric, self.run_dir, self.describe = dict(spec), names.per_epoch(objective), run_dir, describe
        self.trial = None

    def setup(self, trainer, pl_module, stage: str) -> None:
        if trainer.is_global_zero and self.trial is None:
            self.trial = load_trial(self.spec)

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit":  # not the validation pass for calibration after fit
            return
        epoch, value, prune = trainer.current_epoch, trainer.callback_metrics.get(self.metric), False
        if trainer.is_global_zero:
            pruning = not isinstance(self.trial.study.pruner, optuna.pruners.NopPruner)
            if value is None and pruning:
                raise ConfigError(f"hydra.sweeper.pruner needs the objective per epoch, and this run logs no "
                                  f"{self.metric}; use a validation objective (objective={names.BEST}) or pruner=null")
            if value is not None:
                self.trial.report(float(value), step=epoch)
                last = epoch + 1 >= (trainer.max_epochs or float("inf"))  # stopping then saves nothing
                prune = pruning and not last and self.trial.should_prune()
        if trainer.strategy.broadcast(prune):
            reason = f"pruned after epoch {epoch}: {self.metric}={float(value):.4f}"
            if trainer.is_global_zero:
                RunDir(self.run_dir).write_pruned({
                    "reason": reason, "epoch": epoch, "metric": self.metric, "value": float(value),
                    "trial": self.trial.number, "study": self.trial.study.study_name, **self.describe})
            raise Pruned(reason)
