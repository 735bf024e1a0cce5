"""What every fusion method works on: finished runs (ingredients), a way to score weights, and the
arithmetic on state dicts.

An ingredient is a finished training run: ``metrics.json`` written and the checkpoint it was tested
with still on disk. Weights can only be averaged between runs that share architecture, tasks (names,
classes and their order) and, for weight averaging, the initialisation they were fine-tuned from;
anything else is refused naming the run that differs.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import torch

from transferlab.errors import ConfigError



@dataclass
class Ingredient:
    dir: Path
    config: dict
    metrics: dict

    @property
    def checkpoint(self) -> Path:
        """The checkpoint the run was tested with (``best_checkpoint``), in the run's own directory (so a
        moved or copied run uses its own files, never the place it was trained in)."""
        recorded = self.metrics.get("best_checkpoint")
        candidates = [self.dir / "checkpoints" / Path(recorded).name] if recorded else []
        candidates.append(self.dir / "checkpoints" / "last.ckpt")
        for path in candidates:
            if path.is_file():
                return path
        raise ConfigError(f"run '{self.dir}' has no finished checkpoint (looked for "
                          f"{', '.join(str(p) for p in candidates)}); fuse runs that finished with their checkpoints")

    @cached_property
    def checkpoint_content(self) -> dict:
        from transferlab.checkpoints import read_checkpoint

        return read_checkpoint(self.checkpoint)

    @property
    def state(self) -> dict[str, torch.Tensor]:
        """The model's weights (backbone and heads), without the module's metric states."""
        state = self.checkpoint_content["state_dict"]
        return {k[len("model."):]: v for k, v in state.items() if k.startswith("model.")}

    @property
    def tasks(self) -> list[dict]:
        return list(self.checkpoint_content.get("hyper_parameters", {}).get("tasks", []))

    def setting(self, key: str, default=None):
        from transferlab.report.collect import setting

        return setting(self.config, key, default)

    @property
    def label(self) -> str:
        return f"{self.setting('strategy.name', '?')} s{self.setting('seed', '?')} ({self.dir.name})"


def read_ingredient(run_dir) -> Ingredient:
    import yaml

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ConfigError(f"run '{run_dir}' does not exist (runs=[...] takes run directories of tl-train)")
    metrics_path, config_path = run_dir / "metrics.json", run_dir / "config.yaml"
    if not metrics_path.is_file() or not config_path.is_file():
        raise ConfigError(f"run '{run_dir}' did not finish (no metrics.json and config.yaml); only finished "
                          f"runs can be fused")
    config = yaml.safe_load(config_path.read_text()) or {}
    if "strategy" not in config:
        raise ConfigError(f"'{run_dir}' is not a training run (its config.yaml has no strategy); a fused model "
                          f"is not fused again")
    return Ingredient(run_dir.resolve(), config, json.loads(metrics_path.read_text()))


def find_ingredients(sweep, where: dict) -> list[Ingredient]:
    """Every finished training run under ``sweep`` whose config has the ``where`` values (dotted keys)."""
    from transferlab.report.collect import find_runs

    sweep = Path(sweep)
    if not sweep.is_dir():
        raise ConfigError(f"sweep '{sweep}' is not a directory (sweep= takes a multirun directory)")
    runs = [r for r in find_runs([sweep]) if "strategy" in r.config]  # training runs, not earlier fusions
    kept = [r for r in runs if r.status == "finished" and
            all(str(r.setting(k)) == str(v) for k, v in (where or {}).items())]
    if not kept:
        why = f" matching where={dict(where)}" if where else ""
        raise ConfigError(f"no finished training runs under '{sweep}'{why} ({len(runs)} runs there, "
                          f"{sum(r.status == 'finished' for r in runs)} finished); nothing to fuse")
    return [Ingredient(r.dir, r.config, r.metrics) for r in kept]  # read and checked by find_runs already


def check_compatible(ingredients: list[Ingredient], shared_init: bool) -> None:
    """Same architecture and tasks (and initialisation, when weights are averaged), or a ConfigError
    naming the first run that differs from the first one and how."""
    first = ingredients[0]

    def describe(ing: Ingredient) -> dict:
        shapes = {k: tuple(v.shape) for k, v in ing.state.items()}
        out = {"model": f"{ing.setting('model.family', 'timm')}/{ing.setting('model.name')}",
               "tasks and classes": [(t["name"], t.get("label"), t.get("class_names")) for t in ing.tasks],
               "weights": shapes}
        if shared_init:
            out["initialisation"] = (ing.setting("model.checkpoint") or
                                     ("pretrained" if ing.setting("model.pretrained") else "random"))
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
                        "choose runs with where={strategy.name: ...})" if what == "initialisation" else "")
                raise ConfigError(f"run '{ing.dir}' cannot be fused with '{first.dir}': its {what} differ "
                                  f"({shown}){hint}")


def interpolate(theta_0: dict, theta_1: dict, alpha: float) -> dict:
    """(1-α)·θ_0 + α·θ_1 for every floating-point tensor (exact at α = 0 and 1); integer buffers such
    as BatchNorm's ``num_batches_tracked`` are counts, not weights: taken from θ_1."""
    return {k: torch.lerp(v, theta_1[k].to(v.dtype), alpha) if v.is_floating_point() else theta_1[k].clone()
            for k, v in theta_0.items()}


def average(states: list[dict]) -> dict:
    """The uniform mean of floating-point tensors (accumulated in float64); integer buffers from the first."""
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


class Method:
    """A fusion method: ``method(ingredients, score, cfg)`` -> ``Fused``. ``score(weights)`` (a state
    dict or a model) returns the metrics of val, test and every evaluation set."""

    averages_weights = True  # needs one shared initialisation (soups, interpolation)

    def __call__(self, ingredients: list[Ingredient], score, cfg) -> Fused:
        raise NotImplementedError


def best(candidates: list[Candidate], metric: str) -> int:
    """The candidate with the highest validation ``metric``; the first of equals."""
    return max(range(len(candidates)), key=lambda i: (candidates[i].metrics.get(metric, -math.inf), -i))
