"""Fuse: combine finished runs into one model without training (WiSE-FT, soups, ensembles).

``fuse(cfg)`` is ``tl-fuse``: it reads the ingredients, checks they can be combined, scores every
candidate through the run path's own test loop, and leaves a run-like directory that the report
reads as a row: config.yaml, candidates.csv, checkpoints/fused.ckpt (an ordinary checkpoint for
tl-eval), fusion.png, a W&B run and, last, metrics.json.
"""
from __future__ import annotations

import csv
import io
import time
from pathlib import Path
from typing import TYPE_CHECKING

from omegaconf import DictConfig, OmegaConf

from transferlab import metrics as names
from transferlab.choices import FUSIONS
from transferlab.errors import ConfigError

if TYPE_CHECKING:  # torch comes with fusion.base: imported once the config has been checked
    from transferlab.fusion.base import Fused, Ingredient

__all__ = ["FUSIONS", "fuse", "ingredients_of", "validate"]


def validate(cfg: DictConfig) -> None:
    """Everything the config alone can show to be wrong, before any checkpoint is read."""
    FUSIONS.check(cfg.fusion.name)
    select_by = cfg.fusion.select_by
    if not str(select_by).startswith("val/"):
        raise ConfigError(f"fusion.select_by={select_by} is not a validation metric; candidates are chosen on "
                          f"validation so that test and evaluation-set metrics stay unbiased (e.g. val/acc)")
    for alpha in cfg.fusion.get("alphas") or []:
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 <= alpha <= 1:
            raise ConfigError(f"fusion.alphas holds {alpha!r}; every α must be a number in [0, 1] "
                              f"(0 = runs[0], 1 = runs[1])")
    if "alphas" in cfg.fusion and not cfg.fusion.alphas:
        raise ConfigError("fusion.alphas is empty; give at least one α in [0, 1]")
    if cfg.fusion.get("combine", "probs") not in ("probs", "logits"):
        raise ConfigError(f"fusion.combine={cfg.fusion.combine!r} is not valid: probs or logits")
    if bool(cfg.get("runs")) == bool(cfg.get("sweep")):
        raise ConfigError("give the runs to fuse either as runs=[RUN_DIR,...] or as sweep=SWEEP_DIR (one of them)")


def ingredients_of(cfg: DictConfig) -> list[Ingredient]:
    from transferlab.fusion.base import find_ingredients, read_ingredient

    if cfg.get("sweep"):
        where = cfg.get("where")
        return find_ingredients(cfg.sweep, OmegaConf.to_container(where) if where else {})
    return [read_ingredient(r) for r in cfg.runs]


def fuse(cfg: DictConfig) -> dict:
    """Run one fusion into ``cfg.paths.run_dir``; returns metrics.json's content."""
    validate(cfg)
    out = Path(cfg.paths.run_dir)
    if (out / "metrics.json").exists():
        raise ConfigError(f"'{out}' already holds a finished fusion (metrics.json); choose another output directory")
    import pytorch_lightning as pl
    import torch

    from transferlab import tracking
    from transferlab.checkpoints import StreamingCheckpointIO
    from transferlab.config import to_plain
    from transferlab.fusion.base import check_compatible
    from transferlab.fusion.evaluate import Evaluator
    from transferlab.plan import from_checkpoint
    method = FUSIONS.get(cfg.fusion.name)()
    ingredients = ingredients_of(cfg)
    check_compatible(ingredients, shared_init=method.averages_weights)
    reference = ingredients[-1]  # wise_ft: θ_1, whose integer buffers the interpolation keeps
    overrides = {"paths.run_dir": str(out), "logger": None, "strategy.cache_features": False,
                 "trainer.enable_progress_bar": False, "trainer.enable_model_summary": False}
    if cfg.get("eval_sets") is not None:
        overrides["eval_sets"] = OmegaConf.to_container(cfg.eval_sets, resolve=False)
    plan = from_checkpoint(reference.checkpoint, overrides)
    record = to_plain(cfg)
    record["runs"] = [str(i.dir) for i in ingredients]  # the plan: exactly which runs went in
    tracking.write_yaml(out / "config.yaml", tracking.scrub(record))

    pl.seed_everything(cfg.seed, workers=True)
    start = time.perf_counter()
    score = Evaluator(plan, recompute_bn=bool(cfg.fusion.get("recompute_bn")))
    fused: Fused = method(ingredients, score, cfg.fusion)
    chosen = fused.candidates[fused.chosen]
    seconds = time.perf_counter() - start

    metrics = {**chosen.metrics, names.BEST: chosen.metrics.get(cfg.fusion.select_by), "fusion": cfg.fusion.name,
               "chosen": chosen.name, "alpha": chosen.alpha, "model": plan.model.name, "data": plan.data.name,
               "seed": _seeds(i.setting("seed") for i in ingredients), "ingredients": len(ingredients),
               "members": chosen.members, "forward_passes": fused.forward_passes,
               "fuse_seconds": round(seconds, 3), "fused_checkpoint": None}
    tracking.write_atomic(out / "candidates.csv", _candidates_csv(fused))
    if fused.state is not None:
        path = out / "checkpoints" / "fused.ckpt"
        module = score.module
        score.load(fused.state)
        module.val_acc_best = torch.tensor(float(metrics[names.BEST]))
        hparams = dict(module.hparams, config=tracking.scrub(to_plain(plan)),
                       fusion={"method": cfg.fusion.name, "chosen": chosen.name, "alpha": chosen.alpha,
                               "members": chosen.members})
        StreamingCheckpointIO().save_checkpoint({"state_dict": module.state_dict(), "hyper_parameters": hparams,
                                                 "pytorch-lightning_version": pl.__version__}, path)
        metrics["fused_checkpoint"] = str(path)
    _plot(fused, cfg.fusion.select_by, out / "fusion.png")
    _log(cfg, fused, metrics, record, out)
    tracking.write_json(out / "metrics.json", metrics)
    return metrics


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


def curve_metrics(columns) -> list[str]:
    """What a fusion figure draws: accuracy on val, test and every evaluation set."""
    return [k for k in columns if k.endswith("/acc") and k.count("/") <= 2 and k.split("/")[0] in ("val", "test",
                                                                                                 names.EVAL)]


def _plot(fused: Fused, select_by: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    candidates = fused.candidates
    along_alpha = all(c.alpha is not None for c in candidates)  # wise_ft; soups and ensembles: one per candidate
    x = [c.alpha for c in candidates] if along_alpha else list(range(len(candidates)))
    fig, ax = plt.subplots(figsize=(8, 4.5), layout="constrained")
    for metric in curve_metrics(_columns(fused)):
        ax.plot(x, [c.metrics.get(metric, float("nan")) for c in candidates], marker="o", label=metric)
    ax.axvline(x[fused.chosen], color="grey", linestyle="--", label=f"chosen on {select_by}")
    if along_alpha:
        ax.set_xlabel("α  (0 = runs[0], 1 = runs[1])")
    else:
        ax.set_xticks(x, [c.name for c in candidates], rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _log(cfg, fused: Fused, metrics: dict, record: dict, out: Path) -> None:
    """The fusion's own logger runs: every candidate as a step (the curve), the chosen one as summary."""
    from transferlab import tracking

    loggers = tracking.create_loggers(cfg.get("logger"), out)
    try:
        tracking.log_config(loggers, record)
        for step, c in enumerate(fused.candidates):
            values = {k: v for k, v in c.metrics.items() if isinstance(v, float)}
            if c.alpha is not None:
                values["alpha"] = c.alpha
            for logger in loggers:
                logger.log_metrics(values, step=step)
        summary = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        for logger in loggers:
            experiment = getattr(logger, "experiment", None)
            if hasattr(experiment, "summary"):  # W&B: the run's summary is the chosen model, not the last step
                experiment.summary.update(summary)
    except BaseException:
        tracking.finish(loggers, "failed")
        raise
    tracking.finish(loggers)
