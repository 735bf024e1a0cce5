"""What every fusion method works on: finished runs (ingredients), a way to score weights, the
arithmetic on state dicts, and the settings every method shares.

An ingredient is a finished training run: ``metrics.json`` written and the checkpoint it reported its
test metrics with still on disk (another checkpoint would be another model). Weights can only be
averaged between runs that share architecture, tasks (names, classes and their order) and, for weight
averaging, the initialisation they were fine-tuned from (what it is, not how its path was spelt);
anything else is refused naming the run that differs.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from transferlab import runs
from transferlab.errors import ConfigError, suggest
from transferlab.metrics import check_selection, higher_is_better
from transferlab.settings import Settings, setting


@dataclass(kw_only=True)
class Method(Settings):
    """A fusion method: ``method(ingredients, score)`` -> ``Fused``. ``score(weights)`` (a state dict or
    a model) returns the metrics of val, test and every evaluation set."""
    kind: str
    select_by: str = setting("val/acc", (lambda v: isinstance(v, str), "a validation metric"))
    averages_weights = True  # needs one shared initialisation (soups, interpolation)
    along_alpha = False  # its candidates lie on an α axis (a curve to draw)

    def check(self, where):
        check_selection(self.select_by, f"{where}.select_by")

    def check_ingredients(self, ingredients: list["Ingredient"]) -> None:
        """What the runs given can show wrong for this method (how many, which), before the fusion's folder
        is taken: a refused fusion leaves nothing behind."""

    def __call__(self, ingredients: list["Ingredient"], score) -> "Fused":
        raise NotImplementedError


@dataclass
class Ingredient:
    run: runs.Run  # a finished training run

    @property
    def dir(self) -> Path:
        return self.run.dir

    @property
    def config(self) -> dict:
        return self.run.config

    @cached_property
    def checkpoint(self) -> Path:
        return runs.RunDir(self.dir).tested_checkpoint(self.run.metrics)

    @cached_property
    def checkpoint_content(self) -> dict:
        from transferlab.models.checkpoint import read_checkpoint

        return read_checkpoint(self.checkpoint)

    @property
    def state(self) -> dict:
        """The model's weights (backbone and heads), without the module's metric states."""
        state = self.checkpoint_content["state_dict"]
        return {k[len("model."):]: v for k, v in state.items() if k.startswith("model.")}

    @property
    def tasks(self) -> list[dict]:
        return runs.upgrade_tasks(list(self.checkpoint_content.get("hyper_parameters", {}).get("tasks", [])))

    def setting(self, key: str, default=None):
        return self.run.setting(key, default)

    @property
    def label(self) -> str:
        return f"{self.setting('strategy.label', '?')} s{self.setting('seed', '?')} ({self.dir.name})"

    def initialisation(self) -> str:
        """What the run was fine-tuned from: the content of its source checkpoint, the hub weights of its
        model, or its random initialisation (model and seed)."""
        checkpoint = self.setting("model.checkpoint")
        if checkpoint:
            return f"checkpoint {_file_digest(Path(checkpoint), self.dir)}"
        if self.setting("model.pretrained") or self.setting("model.path"):
            return f"pretrained {self.setting('model.kind')}/{self.setting('model.path') or self.setting('model.name')}"
        return f"random init of {self.setting('model.name')} with seed {self.setting('seed')}"


_DIGESTS: dict[Path, str] = {}


def _file_digest(path: Path, run_dir: Path) -> str:
    if not path.is_absolute():
        path = (run_dir / path) if (run_dir / path).is_file() else path.resolve()
    if not path.is_file():
        raise ConfigError(f"run '{run_dir}' was fine-tuned from {path}, which is gone, so whether it shares its "
                          f"initialisation with the other runs cannot be checked; weights are averaged only between "
                          f"fine-tunings of one initialisation")
    key = path.resolve()
    if key not in _DIGESTS:
        h = hashlib.sha256()
        with open(key, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                h.update(block)
        _DIGESTS[key] = h.hexdigest()[:16]
    return _DIGESTS[key]


def read_ingredient(run_dir) -> Ingredient:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ConfigError(f"run '{run_dir}' does not exist (runs=[...] takes run directories of tl-train)")
    run = runs.read_run(run_dir)
    if run.status == "damaged":
        raise ConfigError(f"run '{run_dir}' is damaged: {run.error}")
    if run.status != "finished" or not run.config:
        raise ConfigError(f"run '{run_dir}' did not finish (no metrics.json and config.yaml); only finished "
                          f"runs can be fused")
    if "strategy" not in run.config:
        raise ConfigError(f"'{run_dir}' is not a training run (its config.yaml has no strategy); a fused model "
                          f"is not fused again")
    runs.require_complete(run.config, f"run '{run_dir}': its config.yaml")  # compared with the others by it
    return Ingredient(runs.Run(run.dir.resolve(), run.status, run.config, run.metrics))


def find_ingredients(sweep, where: dict) -> list[Ingredient]:
    """Every finished training run under ``sweep`` whose config has the ``where`` values (dotted keys)."""
    sweep = Path(sweep)
    if not sweep.is_dir():
        raise ConfigError(f"sweep '{sweep}' is not a directory (sweep= takes a multirun directory)")
    found = [r for r in runs.find_runs([sweep]) if "strategy" in r.config]  # training runs, not earlier fusions
    finished = [r for r in found if r.status == "finished"]
    absent = object()
    for key in where or {}:  # a key no run has (strategy.name for strategy.label) would match nothing
        if finished and all(r.setting(key, absent) is absent for r in finished):
            group = key.split(".")[0]
            keys = sorted({f"{group}.{k}" for r in finished if isinstance(r.setting(group), dict)
                           for k in r.setting(group)})
            raise ConfigError(f"where.{key}: no run under '{sweep}' has a setting {key}; "
                              f"{suggest(key, keys) if keys else 'valid: a dotted key of their config.yaml'}")
    kept = [r for r in finished if all(str(r.setting(k)) == str(v) for k, v in (where or {}).items())]
    if not kept:
        why = f" matching where={dict(where)}" if where else ""
        raise ConfigError(f"no finished training runs under '{sweep}'{why} ({len(found)} runs there, "
                          f"{sum(r.status == 'finished' for r in found)} finished); nothing to fuse")
    return [Ingredient(r) for r in kept]


def check_compatible(ingredients: list[Ingredient], shared_init: bool) -> None:
    """Same architecture and tasks (and initialisation, when weights are averaged), or a ConfigError
    naming the first run that differs from the first one and how."""
    first = ingredients[0]

    def describe(ing: Ingredient) -> dict:
        shapes = {k: tuple(v.shape) for k, v in ing.state.items()}
        out = {"model": f"{ing.setting('model.kind', 'timm')}/{ing.setting('model.name')}",
               "tasks and classes": [(t["name"], t.get("column"), t.get("class_names")) for t in ing.tasks],
               "weights": shapes}
        if shared_init:
            out["initialisation"] = ing.initialisation()
        return out

    reference = describe(first)
    for ing in ingredients[1:]:
        own = describe(ing)
        for what, value in reference.items():
            if own[what] != value:
                if what == "weights":
                    diff = sorted(set(value) ^ set(own[what])) or [k for k in value if value[k] != own[what][k]]
                    shown = f"tensor {diff[0]} differs"
                else:
                    shown = f"{own[what]} vs {value}"
                hint = (" (weights can be averaged only between fine-tunings of one initialisation; "
                        "choose runs with where={strategy.label: ...})" if what == "initialisation" else "")
                raise ConfigError(f"run '{ing.dir}' cannot be fused with '{first.dir}': its {what} differ "
                                  f"({shown}){hint}")


def interpolate(theta_0: dict, theta_1: dict, alpha: float) -> dict:
    """(1-α)·θ_0 + α·θ_1 for every floating-point tensor (exact at α = 0 and 1); integer buffers such
    as BatchNorm's ``num_batches_tracked`` are counts, not weights: taken from θ_1."""
    import torch

    return {k: torch.lerp(v, theta_1[k].to(v.dtype), alpha) if v.is_floating_point() else theta_1[k].clone()
            for k, v in theta_0.items()}


def average(states: list[dict]) -> dict:
    """The uniform mean of floating-point tensors (accumulated in float64); integer buffers from the first."""
    import torch

    return {k: (torch.stack([s[k].double() for s in states]).mean(0).to(v.dtype) if v.is_floating_point()
                else v.clone()) for k, v in states[0].items()}


@dataclass
class Candidate:
    """One model a method considered: a row of candidates.csv."""
    name: str
    metrics: dict
    alpha: float | None = None
    members: list[str] = field(default_factory=list)
    kept: bool | None = None  # greedy soup: whether this step's ingredient stayed in the soup


@dataclass
class Fused:
    candidates: list[Candidate]
    chosen: int  # index into candidates
    state: dict | None  # the chosen weights; None for an ensemble (N models, no single state)
    forward_passes: int = 1


def better(a: float, b: float, metric: str) -> bool:
    """Whether ``a`` is at least as good as ``b`` for ``metric`` (its direction)."""
    return a >= b if higher_is_better(metric) else a <= b


def best(candidates: list[Candidate], metric: str) -> int:
    """The candidate with the best validation ``metric`` in its direction; the first of equals."""
    sign = 1 if higher_is_better(metric) else -1

    def score(i: int) -> float:
        value = candidates[i].metrics.get(metric, math.nan)
        return -math.inf if value is None or math.isnan(value) else sign * value
    return max(range(len(candidates)), key=lambda i: (score(i), -i))
