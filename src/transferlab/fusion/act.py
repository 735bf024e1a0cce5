"""``tl-fuse``: one fusion over finished runs, an ordinary act on the run path.

``fuse(cfg)`` checks the config (the method's own settings), reads the ingredients and checks they can be
combined, rebuilds the reference run's model from its checkpoint, takes its directory as every run does
(``run.prepare``: refused when it holds a run, before anything is written), scores every candidate
through the run path's test loop, and leaves a run directory that the report reads as a row:
config.yaml, candidates.csv, checkpoints/fused.ckpt (written by the scoring Trainer, an ordinary
checkpoint for tl-eval), fusion.png, its loggers' runs and, last, metrics.json.
"""
from __future__ import annotations

import csv
import io
import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from transferlab import metrics as names
from transferlab import runs, tracking
from transferlab.errors import ConfigError
from transferlab.fusion import FUSIONS
from transferlab.fusion.base import Fused, Ingredient, Method, find_ingredients, read_ingredient


def check(cfg: DictConfig) -> Method:
    """Everything the config alone can show to be wrong, before any checkpoint is read: the method's settings."""
    method = FUSIONS.parse(cfg.fusion, "fusion")
    given = cfg.get("runs")
    if given is not None and not OmegaConf.is_list(given) and not isinstance(given, (list, tuple)):
        raise ConfigError(f"runs={given!r} is not a list of run directories; write runs=[RUN_DIR,...] (brackets, "
                          f"even for one)")
    if bool(given) == bool(cfg.get("sweep")):
        raise ConfigError("give the runs to fuse either as runs=[RUN_DIR,...] or as sweep=SWEEP_DIR (one of them)")
    return method


def where_of(cfg: DictConfig) -> dict:
    """``where``: dotted keys -> values, however they were written (``+where.strategy.label=x`` nests)."""
    def flat(node, prefix=""):
        if isinstance(node, dict):
            return {k: v for key, value in node.items() for k, v in flat(value, f"{prefix}{key}.").items()}
        return {prefix[:-1]: node}
    where = cfg.get("where")
    return flat(OmegaConf.to_container(where, resolve=True)) if where else {}


def ingredients_of(cfg: DictConfig) -> list[Ingredient]:
    if cfg.get("sweep"):
        return find_ingredients(cfg.sweep, where_of(cfg))
    return [read_ingredient(r) for r in cfg.runs]


def fuse(cfg: DictConfig) -> dict:
    """Run one fusion into ``cfg.paths.run_dir``; returns metrics.json's content."""
    method = check(cfg)
    out = Path(cfg.paths.run_dir)
    import pytorch_lightning as pl
    import torch

    from transferlab import run
    from transferlab.config import to_plain
    from transferlab.fusion.base import check_compatible
    from transferlab.fusion.evaluate import Evaluator
    from transferlab.models import from_checkpoint
    from transferlab.plan import resolve
    from transferlab.redact import scrub
    from transferlab.tracking import parse_loggers

    ingredients = ingredients_of(cfg)
    check_compatible(ingredients, shared_init=method.averages_weights)
    method.check_ingredients(ingredients)
    reference = ingredients[-1]  # wise_ft: θ_1, whose integer buffers the interpolation keeps
    loaded = from_checkpoint(reference.checkpoint)
    overrides = {"paths.run_dir": str(out), "logger": None, "strategy.cache_features": False,
                 "trainer.enable_progress_bar": False, "trainer.enable_model_summary": False, **FIXED}
    if cfg.get("eval_sets") is not None:
        overrides["eval_sets"] = OmegaConf.to_container(cfg.eval_sets, resolve=False)
    plan = resolve(OmegaConf.create(loaded.config), overrides)
    run.prepare(plan, steps=False)  # the model is the checkpoints': nothing to train first
    record = to_plain(cfg)
    record["runs"] = [str(i.dir) for i in ingredients]  # the plan: exactly which runs went in
    with run.session(out, parse_loggers(cfg.get("logger")), record) as loggers:
        pl.seed_everything(cfg.seed, workers=True)
        start = time.perf_counter()
        score = Evaluator(plan, loaded, recompute_bn=bool(getattr(method, "recompute_bn", False)))
        fused: Fused = method(ingredients, score)
        chosen = fused.candidates[fused.chosen]
        seconds = time.perf_counter() - start
        metrics = {**chosen.metrics, names.BEST: chosen.metrics.get(names.MONITOR), "select_by": method.select_by,
                   "fusion": method.kind, "chosen": chosen.name, "alpha": chosen.alpha, "model": plan.model.name,
                   "data": plan.data.label, "seed": _seeds(i.setting("seed") for i in ingredients),
                   "ingredients": len(ingredients), "members": chosen.members, "forward_passes": fused.forward_passes,
                   "fuse_seconds": round(seconds, 3), "fused_checkpoint": None,
                   **_ingredients_described(ingredients)}
        runs.write_atomic(out / runs.CANDIDATES, _candidates_csv(fused))
        if fused.state is not None:  # written by the Trainer that scored it, as a run's checkpoints are
            path = runs.RunDir(out).checkpoints / runs.FUSED
            module = score.module
            score.load(fused.state)
            module.val_acc_best = torch.tensor(float(metrics[names.BEST]))
            module.hparams.update(config=scrub(to_plain(plan.config)), fusion={
                "method": method.kind, "chosen": chosen.name, "alpha": chosen.alpha, "members": chosen.members})
            score.trainer.save_checkpoint(path, weights_only=True)
            metrics["fused_checkpoint"] = str(path)
        _plot(fused, method, runs.RunDir(out).file(runs.FUSION_FIGURE))
        run.write_tables(out, score.module.tasks, score.tables(chosen.metrics), loggers)
        _log(loggers, fused, metrics)
        runs.RunDir(out).write_metrics(metrics)
    return metrics


# A checkpoint's own plan, evaluated: no source run, no hub download, one device.
FIXED = {"model.checkpoint": None, "model.pretrained": False, "source": None, "resume": None, "ckpt_path": None,
         "trainer.devices": 1, "trainer.num_nodes": 1, "trainer.strategy": "auto"}


def _ingredients_described(ingredients: list[Ingredient]) -> dict:
    """What the fused model was made of, so the report never averages it with fusions of other runs."""
    def values(key):
        return sorted({str(i.setting(key)) for i in ingredients})
    return {"ingredient_strategies": values("strategy.label"), "ingredient_models": values("model.name"),
            "ingredient_data": values("data.label"),
            "ingredient_settings": sorted({runs.setting_digest(i.config) for i in ingredients})}


def _log(loggers, fused: Fused, metrics: dict) -> None:
    """Every candidate as a step (the curve), the chosen one as the W&B run's summary."""
    for step, c in enumerate(fused.candidates):
        values = {k: v for k, v in c.metrics.items() if isinstance(v, float)}
        if c.alpha is not None:
            values["alpha"] = c.alpha
        for logger in loggers:
            logger.log_metrics(values, step=step)
    tracking.summarize(loggers, metrics)  # the run's summary is the chosen model, not the last step


def _seeds(values):
    """The ingredients' seed when they share one (a row per seed in the report), else all of them."""
    values = list(dict.fromkeys(values))
    return values[0] if len(values) == 1 else "+".join(map(str, values))


def _columns(fused: Fused) -> list[str]:
    keys = dict.fromkeys(k for c in fused.candidates for k in c.metrics)
    return sorted(keys, key=lambda k: (not k.startswith("val/"), not k.startswith("test/"), k))


def _candidates_csv(fused: Fused) -> str:
    buf = io.StringIO()
    metric_columns = _columns(fused)
    writer = csv.DictWriter(buf, fieldnames=["candidate", "alpha", "kept", "chosen", "members", *metric_columns])
    writer.writeheader()
    for i, c in enumerate(fused.candidates):
        writer.writerow({"candidate": c.name, "alpha": "" if c.alpha is None else c.alpha,
                         "kept": "" if c.kept is None else c.kept, "chosen": i == fused.chosen,
                         "members": " ".join(c.members), **c.metrics})
    return buf.getvalue()


def _plot(fused: Fused, method, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    candidates, along_alpha = fused.candidates, method.along_alpha  # wise_ft; soups and ensembles: one per candidate
    x = [c.alpha for c in candidates] if along_alpha else list(range(len(candidates)))
    fig, ax = plt.subplots(figsize=(8, 4.5), layout="constrained")
    for metric in names.accuracies(_columns(fused)):
        ax.plot(x, [c.metrics.get(metric, float("nan")) for c in candidates], marker="o", label=metric)
    ax.axvline(x[fused.chosen], color="grey", linestyle="--", label=f"chosen on {method.select_by}")
    if along_alpha:
        ax.set_xlabel("α  (0 = runs[0], 1 = runs[1])")
    else:
        ax.set_xticks(x, [c.name for c in candidates], rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=110)
    plt.close(fig)
