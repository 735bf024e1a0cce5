"""Group runs into rows (same settings, different seeds), compute mean ± std, write Markdown and CSV.

A row is every finished run whose config matches once the seed and run-specific values are set
aside, so a sweep over ``strategy`` × ``optimizer.lr`` × ``seed`` gives one row per (strategy, lr).
"""
from __future__ import annotations

import csv
import json
import math
import statistics
from dataclasses import dataclass
from pathlib import Path

from transferlab import metrics as names
from transferlab.report.collect import Run

# Config keys that differ between seeds of the same setting without changing it.
RUN_SPECIFIC = ("seed", "paths", "hydra", "logger", "ckpt_path", "model.checkpoint", "experiment_name",
                "source.cache_dir", "trainer.enable_progress_bar", "trainer.enable_model_summary")
SHOWN = names.SHOWN  # report.md
METRICS = names.COMPARED  # report.csv
NAMED_GROUPS = ("model", "data")  # shown by their name alone; other groups as group=name


@dataclass
class Row:
    label: str
    runs: list[Run]  # finished runs only
    best: bool = False

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


def _flatten(node, prefix="") -> dict:
    if isinstance(node, dict):
        out = {}
        for k, v in node.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: json.dumps(node, sort_keys=True, default=str)}


def setting_key(run: Run) -> tuple:
    """The run's config without seed and run-specific values: equal keys = same row."""
    flat = _flatten(run.config)
    drop = lambda k: any(k == p or k.startswith(p + ".") for p in RUN_SPECIFIC)  # noqa: E731
    return tuple(sorted((k, v) for k, v in flat.items() if not drop(k)))


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
        for name in (key.split(".")[0] + ".name", "strategy.name"):
            if key == name or name not in every:
                continue
            seen = {}
            for d in dicts:
                seen.setdefault(d.get(name), set()).add(d.get(key, absent))
            if all(len(v) == 1 for v in seen.values()):
                return True
        return False

    names_first = [f"{g}.name" for g in NAMED_GROUPS]
    differing.sort(key=lambda k: (k not in names_first, k))
    out = {}
    for key, d in zip(keys, dicts):
        parts = [json.loads(d.get("strategy.name", '"?"'))]
        for k in differing:
            if k == "strategy.name" or k not in d or explained(k):
                continue  # a setting this row does not have says nothing about it
            value, group = json.loads(d[k]), k.split(".")[0]
            if k == f"{group}.name":
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
    rows = [Row(label, sorted(rs, key=_seed_order)) for label, rs in grouped.items()]
    rows.sort(key=lambda row: (_descending(row.mean(names.PRIMARY)), row.label))
    if rows and not math.isnan(rows[0].mean(names.PRIMARY)):
        rows[0].best = True
    return rows, run_labels


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


def markdown(rows: list[Row], runs: list[Run], run_labels: dict, dirs, figure: str | None) -> str:
    counts = {s: sum(r.status == s for r in runs) for s in ("finished", "failed", "incomplete")}
    lines = ["# transferlab report", "",
             "Runs under " + ", ".join(f"`{d}`" for d in dirs) + ": " +
             ", ".join(f"{n} {s}" for s, n in counts.items()) + ". Mean ± sample std over seeds.", "",
             "| setting | " + " | ".join(SHOWN) + " | trainable params | fit time (s) | seeds |",
             "|---|" + "---:|" * (len(SHOWN) + 3)]
    for row in rows:
        label = f"**{row.label}** (best)" if row.best else row.label
        seeds = f"{len(row.runs)} ({', '.join(map(str, row.seeds))})"
        lines.append(f"| {label} | " + " | ".join(_pm(row, m) for m in SHOWN) +
                     f" | {_num(row.mean('trainable_params'), ',.0f')} | {_num(row.mean('fit_seconds'), '.1f')} | {seeds} |")
    note = significance(rows)
    if note:
        lines += ["", note]
    if figure:
        lines += ["", f"![test accuracy and validation curves]({figure})"]
    problems = [r for r in runs if r.status != "finished"]
    if problems:
        lines += ["", "## Failed and incomplete runs (not counted above)", "",
                  "| status | setting | seed | directory | reason |", "|---|---|---|---|---|"]
        for r in problems:
            reason = (r.error or "").replace("|", "\\|").replace("\n", " ")
            lines.append(f"| {r.status} | {run_labels[r.dir]} | {r.describe('seed')} | `{r.dir}` | {reason} |")
    return "\n".join(lines) + "\n"


def write_csv(path: Path, rows: list[Row], runs: list[Run], run_labels: dict) -> None:
    """Rows first (``kind=row``), then every run (``kind=run``) with its status, at full precision."""
    stats = [c for m in METRICS for c in (m, f"{m}_std")]
    columns = ["kind", "label", "status", "best", "strategy", "model", "data", "seeds", "n_seeds", *stats,
               "trainable_params", "fit_seconds", "run_dir", "error"]

    def describe(rs: list[Run], key: str) -> str:
        return " ".join(dict.fromkeys(str(r.describe(key)) for r in rs))

    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({"kind": "row", "label": row.label, "status": "finished", "best": row.best,
                             **{k: describe(row.runs, k) for k in ("strategy", "model", "data")},
                             "seeds": " ".join(map(str, row.seeds)), "n_seeds": len(row.runs),
                             **{c: (row.std(c[:-4]) if c.endswith("_std") else row.mean(c)) for c in stats},
                             "trainable_params": row.mean("trainable_params"), "fit_seconds": row.mean("fit_seconds")})
        for r in runs:
            finished = r.status == "finished"
            writer.writerow({"kind": "run", "label": run_labels[r.dir], "status": r.status, "best": "",
                             **{k: r.describe(k) for k in ("strategy", "model", "data")},
                             "seeds": r.describe("seed"), "n_seeds": 1 if finished else 0,
                             **{m: r.metrics.get(m, "") for m in METRICS if finished},
                             "trainable_params": r.metrics.get("trainable_params", ""),
                             "fit_seconds": r.metrics.get("fit_seconds", ""),
                             "run_dir": str(r.dir), "error": r.error or ""})
