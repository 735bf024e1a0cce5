"""Group runs into rows (same settings, different seeds), compute mean ± std, write Markdown and CSV.

A row is every finished run whose config matches once the seed and run-specific values are set
aside, so a sweep over ``strategy`` × ``optimizer.lr`` × ``seed`` gives one row per (strategy, lr).
"""
from __future__ import annotations

import csv
import io
import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from transferlab import metrics as names
from transferlab import runs
from transferlab.errors import ConfigError
from transferlab.runs import Run, write_atomic

# Config keys that differ between seeds of the same setting without changing it.
SHOWN = names.SHOWN  # report.md
METRICS = names.COMPARED  # report.csv
# The key that names each group's choice in a label; other groups are named by their ``kind``.
CHOICE = {"model": "model.name", "data": "data.label", "strategy": "strategy.label", "fusion": "fusion.kind"}
NAMED_GROUPS = ("model", "data")  # shown by their name alone; other groups as group=name
HOW_MADE = ("strategy.label", "fusion.kind")  # how a row's model was made: the start of its label


def choice(group: str) -> str:
    return CHOICE.get(group, f"{group}.kind")


def tuned() -> tuple[str, ...]:
    """Hyperparameters a sweep tunes, as each registry entry declares them: with ``select_by``, rows that
    differ only in these are one setting tried several ways, and the report keeps the best on validation."""
    from transferlab.models import FAMILIES
    from transferlab.optim import OPTIMIZERS, SCHEDULERS
    from transferlab.regularizers import REGULARIZERS
    from transferlab.strategies import STRATEGIES

    return tuple(k for registry in (OPTIMIZERS, SCHEDULERS, STRATEGIES, REGULARIZERS, FAMILIES)
                 for k in registry.tunable())
LR_PEAKS = tuple(names.lr(kind, "peak") for kind in (*names.LR_KINDS, names.ADAPTERS))  # shown when recorded
# What a setting costs to train, shown when the runs recorded it: metric -> (column, scale, format)
COSTS = {"train_step_seconds": ("step time (ms)", 1000, ".1f"), "peak_memory_mb": ("peak memory (MB)", 1, ",.0f")}


@dataclass
class Row:
    label: str
    runs: list[Run]  # finished runs only
    best: bool = False
    key: tuple = ()  # the setting (``setting_key``)
    chosen: str = ""  # with selection: the tuned values this row stands for
    tried: list["Row"] = field(default_factory=list)  # with selection: every setting it was chosen from

    def values(self, metric: str) -> list[float]:
        return [float(r.metrics[metric]) for r in self.runs if isinstance(r.metrics.get(metric), (int, float))]

    def mean(self, metric: str) -> float:
        v = self.values(metric)
        return statistics.fmean(v) if v else math.nan

    def std(self, metric: str) -> float:
        """Sample standard deviation (n-1), 0 for a single seed."""
        v = self.values(metric)
        return statistics.stdev(v) if len(v) > 1 else (0.0 if v else math.nan)

    @property
    def seeds(self) -> list:
        return [r.describe("seed") for r in self.runs]


def setting_key(run: Run) -> tuple:
    """The run's config without seed and run-specific values: equal keys = same row. A fused model's
    config says how it was fused; what it was fused from (its ingredients' model, data and strategy)
    is part of its setting too, so fusions of other runs never share its row."""
    config = dict(run.config)
    if "fusion" in config:
        m = run.metrics

        def joined(values):
            return "+".join(map(str, values)) if isinstance(values, list) else values
        config["ingredients"] = {"model": joined(m.get("ingredient_models", m.get("model"))),
                                 "data": joined(m.get("ingredient_data", m.get("data"))),
                                 "strategy": joined(m.get("ingredient_strategies")),
                                 "settings": joined(m.get("ingredient_settings"))}
    return runs.setting_items(config)


def labels(keys: list[tuple]) -> dict[tuple, str]:
    """Strategy name plus whatever else differs between rows; keys that only change with their
    group's name (``optimizer.momentum`` with ``optimizer=sgd``) or with the strategy are left out."""
    dicts = [dict(k) for k in keys]
    every = sorted(set().union(*dicts)) if dicts else []
    absent = "-"
    differing = [k for k in every if len({d.get(k, absent) for d in dicts}) > 1]

    def explained(key: str) -> bool:
        """True when the key's value follows from its group's name or from the strategy (e.g. the
        tasks and source settings that come with strategy=multitask): the name says it already."""
        group = key.split(".")[0]
        # a fusion's method may explain what its ingredients are (wise_ft: linear_probe+finetune), never which
        # runs it chose among them (``where``: "over finetune")
        for name in (choice(group), HOW_MADE[0], *((HOW_MADE[1],) if group == "ingredients" else ())):
            if key == name or name not in every:
                continue
            seen = {}
            for d in dicts:
                seen.setdefault(d.get(name), set()).add(d.get(key, absent))
            if all(len(v) == 1 for v in seen.values()):
                return True
        return False

    names_first = [choice(g) for g in NAMED_GROUPS]
    differing.sort(key=lambda k: (k not in names_first, k))
    out = {}
    for key, d in zip(keys, dicts):
        parts = [json.loads(next((d[k] for k in HOW_MADE if k in d), '"?"'))]  # how the model was made
        for k in differing:
            if k in HOW_MADE or k not in d or explained(k):
                continue  # a setting this row does not have says nothing about it
            value, group = json.loads(d[k]), k.split(".")[0]
            if group == "where":  # a fusion's ingredients: greedy_soup, over finetune
                parts.append(f"over {value}")
            elif k == choice(group):
                parts.append(str(value) if group in NAMED_GROUPS else f"{group}={value}")
            else:
                parts.append(f"{k}={value}")
        out[key] = ", ".join(parts)
    return out


def _seed_order(run: Run):
    seed = run.describe("seed")
    return (0, seed, "") if isinstance(seed, int) else (1, 0, str(seed))


def _descending(value: float) -> float:
    return math.inf if math.isnan(value) else -value


def build_rows(runs: list[Run]) -> tuple[list[Row], dict[Path, str]]:
    """Rows of finished runs, best (highest mean test/acc) first, and a label for every run."""
    keyed = {r.dir: setting_key(r) for r in runs if r.config}
    label_of = labels(sorted(set(keyed.values())))
    run_labels = {r.dir: label_of[keyed[r.dir]] if r.dir in keyed else str(r.describe("strategy") or "?")
                  for r in runs}
    grouped: dict[str, list[Run]] = {}
    for r in runs:
        if r.status == "finished":
            grouped.setdefault(run_labels[r.dir], []).append(r)
    rows = [Row(label, sorted(rs, key=_seed_order), key=keyed.get(rs[0].dir, ())) for label, rs in grouped.items()]
    return rank(rows), run_labels


def rank(rows: list[Row]) -> list[Row]:
    """Best mean test/acc first; the first is marked best."""
    rows.sort(key=lambda row: (_descending(row.mean(names.PRIMARY)), row.label))
    if rows and not math.isnan(rows[0].mean(names.PRIMARY)):
        rows[0].best = True
    return rows


def select(rows: list[Row], metric: str) -> list[Row]:
    """One row per setting once the tuned keys are set aside: the one with the best mean ``metric``
    over its seeds (a validation metric; test metrics never choose). Ties go to the first label."""
    if names.is_test(metric) or not metric.startswith("val/"):
        raise ConfigError(f"select_by={metric} is not a validation metric; settings are chosen on validation "
                          f"so that test metrics stay unbiased: use e.g. select_by={names.BEST}")
    families: dict[tuple, list[Row]] = {}
    keys = tuned()
    for row in rows:
        families.setdefault(tuple(kv for kv in row.key if not runs.under(kv[0], keys)), []).append(row)
    family_label = labels(sorted(families))
    chosen = []
    for family, tried in families.items():
        scored = [r for r in tried if not math.isnan(r.mean(metric))]
        if not scored:
            raise ConfigError(f"select_by={metric}: no finished run of '{tried[0].label}' recorded {metric} in "
                              f"its metrics.json; choose a metric the runs have, e.g. {names.BEST}")
        best = min(scored, key=lambda r: (-r.mean(metric), r.label))
        differing = sorted({k for r in tried for k, v in r.key if runs.under(k, keys) and
                            len({dict(t.key).get(k) for t in tried}) > 1})
        values = ", ".join(f"{k}={json.loads(dict(best.key)[k])}" for k in differing if k in dict(best.key))
        chosen.append(Row(family_label[family], best.runs, key=best.key, chosen=values or "(only one setting)",
                          tried=sorted(tried, key=lambda r: (-r.mean(metric) if not math.isnan(r.mean(metric))
                                                             else math.inf, r.label))))
    return rank(chosen)


def significance(rows: list[Row], metric: str = names.PRIMARY) -> str | None:
    """A one-line warning when the winner is not clearly ahead of the runner-up."""
    if len(rows) < 2 or not rows[0].best:
        return None
    best, second = rows[0], rows[1]
    gap, spread = best.mean(metric) - second.mean(metric), max(best.std(metric), second.std(metric))
    if len(best.runs) < 2 or len(second.runs) < 2:
        return (f"Note: {best.label} vs {second.label} rests on a single seed; run more seeds "
                f"before trusting a {metric} gap of {gap:.4f}.")
    if gap <= spread:
        return (f"Note: the difference between {best.label} and the runner-up {second.label} "
                f"({gap:.4f} {metric}) is within one standard deviation ({spread:.4f}): not significant.")
    return None


def _pm(row: Row, metric: str) -> str:
    mean, std = row.mean(metric), row.std(metric)
    return "n/a" if math.isnan(mean) else f"{mean:.4f} ± {std:.4f}"


def _num(value: float, fmt: str) -> str:
    return "n/a" if math.isnan(value) else format(value, fmt)


def eval_metrics(rows: list[Row], metrics=("acc",)) -> list[str]:
    """``eval/<set>/<metric>`` columns of the evaluation sets the rows' runs were tested on."""
    found = {k for row in rows for r in row.runs for k in r.metrics if names.is_eval(k)}
    return sorted(k for k in found if k.count("/") == 2 and k.rsplit("/", 1)[1] in metrics)


def calibrated(rows: list[Row], metrics=names.CALIBRATED[:1]) -> list[str]:
    """The calibration columns the rows' runs have (runs from before ``eval.calibration`` have none)."""
    return [m for m in metrics if any(m in r.metrics for row in rows for r in row.runs)]


def study_lines(study: dict) -> list[str]:
    """The Optuna study behind a sweep (its optimization_results.yaml): trials, best value, importances."""
    trials = study.get("trials", {})
    lines = ["", f"## Optuna study `{study.get('study_name')}`", "",
             f"`{study.get('storage')}`: " + ", ".join(f"{n} {s}" for s, n in trials.items()) +
             f" trials ({study.get('direction')} {study.get('objective')})."]
    if "best_value" in study:
        params = ", ".join(f"{k}={v}" for k, v in study["best_params"].items())
        lines[-1] += f" Best {study.get('objective')} = {study['best_value']:.4f} (trial {study['best_trial']}): {params}."
        importances = study.get("importances")
        lines += ["", "Parameter importances (fANOVA): " + (", ".join(f"{k} {v:.2f}" for k, v in importances.items())
                                                            if isinstance(importances, dict) else str(importances)) + "."]
    return lines


def markdown(rows: list[Row], runs: list[Run], run_labels: dict, dirs, figures: list[str] = (),
             select_by: str | None = None, study: dict | None = None) -> str:
    counts = {s: sum(r.status == s for r in runs) for s in ("finished", "pruned", "failed", "incomplete", "damaged")}
    for rare in ("pruned", "damaged"):  # only Optuna searches prune; damaged files are rare
        if not counts[rare]:
            del counts[rare]
    shown = [*SHOWN, *eval_metrics(rows), *calibrated(rows)]
    passes = any(row.mean("forward_passes") > 1 for row in rows)  # an ensemble's cost beside its accuracy
    peaks = [m for m in LR_PEAKS if any(m in r.metrics for row in rows for r in row.runs)]
    costs = [m for m in COSTS if any(isinstance(r.metrics.get(m), (int, float)) for row in rows for r in row.runs)]
    chosen = [f"chosen on {select_by}", f"{select_by}"] if select_by else []
    lines = ["# transferlab report", "",
             "Runs under " + ", ".join(f"`{d}`" for d in dirs) + ": " +
             ", ".join(f"{n} {s}" for s, n in counts.items()) + ". Mean ± sample std over seeds.", "",
             "| setting | " + " | ".join([*chosen, *shown]) + " | trainable params | fit time (s) | seeds |" +
             "".join(f" {COSTS[m][0]} |" for m in costs) + "".join(f" {m} |" for m in peaks) +
             (" forward passes |" if passes else ""),
             "|---|" + "---:|" * (len(chosen) + len(shown) + 3 + len(costs) + len(peaks) + passes)]
    for row in rows:
        label = f"**{row.label}** (best)" if row.best else row.label
        seeds = f"{len(row.runs)} ({', '.join(map(str, row.seeds))})"
        selected = [row.chosen, _pm(row, select_by)] if select_by else []
        lines.append(f"| {label} | " + " | ".join([*selected, *(_pm(row, m) for m in shown)]) +
                     f" | {_num(row.mean('trainable_params'), ',.0f')} | {_num(row.mean('fit_seconds'), '.1f')} | {seeds} |"
                     + "".join(f" {_num(row.mean(m) * COSTS[m][1], COSTS[m][2])} |" for m in costs)
                     + "".join(f" {_num(row.mean(m), '.3g')} |" for m in peaks)
                     + (f" {_num(row.mean('forward_passes'), '.0f') if row.values('forward_passes') else 1} |"
                        if passes else ""))
    if select_by:
        lines += ["", f"Each setting above is the one with the best mean {select_by} of those tried (below); "
                      f"test metrics played no part in the choice. Peak learning rates: the highest rate the "
                      f"backbone's and the heads' parameter groups trained at (0 = frozen throughout).", "",
                  f"## Every setting tried (chosen on {select_by})", "",
                  f"| setting | tried | {select_by} | {names.PRIMARY} | seeds | chosen |", "|---|---|---:|---:|---:|---|"]
        for row in rows:
            for t in row.tried:
                lines.append(f"| {row.label} | {t.label} | {_pm(t, select_by)} | {_pm(t, names.PRIMARY)} | "
                             f"{len(t.runs)} | {'yes' if t.key == row.key else ''} |")
    fused = [row for row in rows if any("fusion" in r.metrics for r in row.runs)]
    if fused:
        lines += ["", "Fused rows (" + ", ".join(row.label for row in fused) + ") combine finished runs without "
                  "training (tl-fuse): an α or a soup's members chosen on validation; an ensemble costs one forward "
                  "pass per member. Their candidates are in each fusion's candidates.csv."]
    note = significance(rows)
    if note:
        lines += ["", note]
    if study:
        lines += study_lines(study)
    captions = {"report.png": "test accuracy and validation curves", "fusion.png": "accuracy along the WiSE-FT path",
                "optimization_history.png": "Optuna optimisation history"}
    for figure in figures:
        lines += ["", f"![{captions.get(figure, figure)}]({figure})"]
    pruned = [r for r in runs if r.status == "pruned"]
    if pruned:
        lines += ["", "## Pruned trials (stopped early by Optuna's pruner; not counted above)", "",
                  "| setting | seed | directory | when |", "|---|---|---|---|"]
        lines += [f"| {run_labels[r.dir]} | {r.describe('seed')} | `{r.dir}` | {r.error} |" for r in pruned]
    problems = [r for r in runs if r.status in ("failed", "incomplete")]
    if problems:
        lines += ["", "## Failed and incomplete runs (not counted above)", "",
                  "| status | setting | seed | directory | reason |", "|---|---|---|---|---|"]
        for r in problems:
            reason = (r.error or "").replace("|", "\\|").replace("\n", " ")
            lines.append(f"| {r.status} | {run_labels[r.dir]} | {r.describe('seed')} | `{r.dir}` | {reason} |")
    damaged = [r for r in runs if r.status == "damaged"]
    if damaged:
        lines += ["", "## Damaged runs (files that cannot be read; not counted above)", "",
                  "| setting | seed | directory | reason |", "|---|---|---|---|"]
        for r in damaged:
            reason = (r.error or "").replace("|", "\\|").replace("\n", " ")
            seed = r.describe("seed")
            lines.append(f"| {run_labels[r.dir]} | {'?' if seed is None else seed} | `{r.dir}` | {reason} |")
    return "\n".join(lines) + "\n"


def write_csv(path: Path, rows: list[Row], runs: list[Run], run_labels: dict) -> None:
    """Rows first (``kind=row``), then every run (``kind=run``) with its status, at full precision."""
    evaluated = [*eval_metrics(rows, names.CLASSIFICATION), *calibrated(rows, names.CALIBRATED)]
    stats = [c for m in [*METRICS, *evaluated] for c in (m, f"{m}_std")]
    columns = ["kind", "label", "status", "best", "strategy", "model", "data", "seeds", "n_seeds", *stats,
               "trainable_params", "fit_seconds", *COSTS, "run_dir", "error", "chosen", *LR_PEAKS]

    def describe(rs: list[Run], key: str) -> str:
        return " ".join(dict.fromkeys(str(r.describe(key)) for r in rs))

    f = io.StringIO(newline="")  # the whole table first, then one atomic write: never half a report.csv
    writer = csv.DictWriter(f, fieldnames=columns)
    writer.writeheader()

    def summary(kind: str, row: Row, label: str) -> dict:
        return {"kind": kind, "label": label, "status": "finished", "best": row.best if kind == "row" else "",
                **{k: describe(row.runs, k) for k in ("strategy", "model", "data")},
                "seeds": " ".join(map(str, row.seeds)), "n_seeds": len(row.runs),
                **{c: (row.std(c[:-4]) if c.endswith("_std") else row.mean(c)) for c in stats},
                "trainable_params": row.mean("trainable_params"), "fit_seconds": row.mean("fit_seconds"),
                **{m: row.mean(m) for m in COSTS}, "chosen": row.chosen, **{m: row.mean(m) for m in LR_PEAKS}}

    for row in rows:
        writer.writerow(summary("row", row, row.label))
    for row in rows:  # with selection: every setting a row was chosen from
        for t in row.tried:
            writer.writerow(summary("tried", t, t.label))
    for r in runs:
        finished = r.status == "finished"
        writer.writerow({"kind": "run", "label": run_labels[r.dir], "status": r.status, "best": "",
                         **{k: r.describe(k) for k in ("strategy", "model", "data")},
                         "seeds": r.describe("seed"), "n_seeds": 1 if finished else 0,
                         **{m: r.metrics.get(m, "") for m in [*METRICS, *evaluated] if finished},
                         "trainable_params": r.metrics.get("trainable_params", ""),
                         "fit_seconds": r.metrics.get("fit_seconds", ""),
                         **{m: r.metrics.get(m, "") if finished else "" for m in COSTS},
                         "run_dir": str(r.dir), "error": r.error or ""})
    write_atomic(path, f.getvalue())
