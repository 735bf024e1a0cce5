"""report.png: final test accuracy per row (bars, ± std over seeds) beside validation accuracy per epoch.

One colour per row in both panels, so a bar and its curve read as the same setting.
"""
from __future__ import annotations

import statistics
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # a sweep's last job or a headless server has no display
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from transferlab import metrics as names  # noqa: E402
from transferlab.runs import CANDIDATES, read_history  # noqa: E402
from transferlab.runs.files import umask  # noqa: E402
from transferlab.reports.table import Row  # noqa: E402


def mean_curve(row: Row, metric: str = names.MONITOR) -> tuple[list[int], list[float], list[float]]:
    """Epochs, mean and std over the row's seeds of ``metric``, epochs where at least one seed logged it."""
    histories = [h for h in (read_history(r.dir, metric) for r in row.runs) if h]
    epochs = sorted(set().union(*histories)) if histories else []
    values = [[h[e] for h in histories if e in h] for e in epochs]
    return (epochs, [statistics.fmean(v) for v in values],
            [statistics.stdev(v) if len(v) > 1 else 0.0 for v in values])


def plot(rows: list[Row], path: Path, metric: str = names.PRIMARY) -> Path:
    """Horizontal bars, so long labels (strategy, model, overrides) stay on one readable line."""
    colors = plt.get_cmap("tab10" if len(rows) <= 10 else "tab20").colors
    color = {row.label: colors[i % len(colors)] for i, row in enumerate(rows)}
    fig, (bars, curves) = plt.subplots(2, 1, figsize=(11, 4.5 + 0.45 * len(rows)), layout="constrained",
                                       gridspec_kw={"height_ratios": [max(2.2, 1 + 0.45 * len(rows)), 4]})

    y = range(len(rows))
    means, stds = [row.mean(metric) for row in rows], [row.std(metric) for row in rows]
    bars.barh(y, means, xerr=stds, capsize=4, color=[color[r.label] for r in rows], edgecolor="black",
              linewidth=[2.5 if r.best else 0 for r in rows], alpha=0.9, height=0.7)
    for i, (row, mean, std) in enumerate(zip(rows, means, stds)):
        if mean != mean:  # NaN: no run of this row logged the metric
            continue
        text = f"{mean:.3f} ± {std:.3f}  (n={len(row.runs)})" + ("  best" if row.best else "")
        bars.text(mean + std + 0.01, i, text, va="center", fontsize=9, fontweight="bold" if row.best else "normal")
    bars.set_yticks(list(y), [row.label for row in rows], fontsize=9)
    bars.invert_yaxis()  # best on top, as in report.md
    bars.set_xlim(0, 1.3)  # room for the numbers right of a bar near 1
    bars.set_xticks([0, 0.2, 0.4, 0.6, 0.8, 1.0])
    bars.set_xlabel(metric)
    bars.set_title(f"{metric}: mean ± std over seeds")
    bars.grid(axis="x", alpha=0.3)

    bands = len(rows) <= 4  # more bands than that hide the curves
    plotted = 0
    for row in rows:
        epochs, mean, std = mean_curve(row)
        if not epochs:
            continue
        plotted += 1
        c = color[row.label]
        curves.plot(epochs, mean, marker="o", markersize=3, color=c, label=row.label)
        if bands:
            curves.fill_between(epochs, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)],
                                color=c, alpha=0.15, linewidth=0)
    if plotted:
        curves.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False)
    else:
        curves.text(0.5, 0.5, "no per-epoch history\n(runs have no csv/metrics.csv)", ha="center",
                    va="center", transform=curves.transAxes, color="gray")
    curves.xaxis.set_major_locator(MaxNLocator(integer=True))
    curves.set_ylim(0, 1.05)
    curves.set_xlabel("epoch")
    curves.set_ylabel(names.MONITOR)
    curves.set_title(f"{names.MONITOR} per epoch: mean over seeds" + (" (band: ± std)" if bands else ""))
    curves.grid(alpha=0.3)

    return _save(fig, path)


def plot_alpha(rows: list[Row], path: Path) -> Path | None:
    """fusion.png: accuracy along the WiSE-FT path θ(α), mean ± std over the seeds' interpolations,
    on validation (which chose α), test and every evaluation set; None when no row interpolated."""
    import csv

    tables = [list(csv.DictReader(open(r.dir / CANDIDATES))) for row in rows for r in row.runs
              if (r.dir / CANDIDATES).is_file()]
    tables = [t for t in tables if t and all(line.get("alpha") for line in t)]  # candidates along an α axis
    if not tables:
        return None
    fig, ax = plt.subplots(figsize=(8, 4.5), layout="constrained")
    for metric in names.accuracies(tables[0][0]):
        points: dict[float, list[float]] = {}
        for table in tables:
            for line in table:
                if line.get(metric):
                    points.setdefault(float(line["alpha"]), []).append(float(line[metric]))
        alphas = sorted(points)
        mean = [statistics.fmean(points[a]) for a in alphas]
        std = [statistics.stdev(points[a]) if len(points[a]) > 1 else 0.0 for a in alphas]
        ax.plot(alphas, mean, marker="o", markersize=4, label=metric)
        ax.fill_between(alphas, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)], alpha=0.15)
    ax.set_xlabel("α   (0 = θ_0, e.g. the linear probe; 1 = θ_1, the fine-tuned run)")
    ax.set_ylabel("accuracy")
    ax.set_title(f"WiSE-FT θ(α) = (1-α)·θ_0 + α·θ_1: mean ± std over {len(tables)} interpolation(s)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_confusion(classes: list[str], matrix, path: Path, title: str) -> Path:
    """Counts with each row's share as the colour, so a rare class's failures show as clearly as a
    frequent one's; the diagonal is what the model gets right."""
    import numpy as np

    counts = np.asarray(matrix)
    share = counts / np.maximum(1, counts.sum(1, keepdims=True))
    n = len(classes)
    fig, ax = plt.subplots(figsize=(2.5 + 0.5 * n, 2 + 0.45 * n), layout="constrained")
    image = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    if n <= 30:  # beyond that the numbers no longer fit their cells
        for (i, j), count in np.ndenumerate(counts):
            ax.text(j, i, str(count), ha="center", va="center", fontsize=8,
                    color="white" if share[i, j] > 0.5 else "black")
    ticks = range(n) if n <= 50 else []
    ax.set_xticks(list(ticks), [classes[i] for i in ticks], rotation=45, ha="right", fontsize=8)
    ax.set_yticks(list(ticks), [classes[i] for i in ticks], fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"{title} (colour: share of the true class)", fontsize=9)
    fig.colorbar(image, ax=ax, shrink=0.8)
    return _save(fig, path)


def plot_ranking(candidates, scores, path: Path) -> Path:
    """One panel per score, candidates sorted by it (best on top); with fine-tuned runs, a second row puts
    each score against the accuracy fine-tuning reached, the agreement τ summarises."""
    validated = [c for c in candidates if c.accuracy]
    rows = 2 if len(validated) >= 2 else 1
    fig, axes = plt.subplots(rows, len(scores), figsize=(4.2 * len(scores), 1.5 + 0.4 * len(candidates) + 3 * (rows - 1)),
                             layout="constrained", squeeze=False)
    for j, s in enumerate(scores):
        ordered = sorted(candidates, key=lambda c: c.scores[s.kind])
        ax = axes[0][j]
        ax.barh(range(len(ordered)), [c.scores[s.kind] for c in ordered], color="tab:blue", alpha=0.8)
        ax.set_yticks(range(len(ordered)), [c.label if len(c.label) <= 40 else c.label[:37] + "..." for c in ordered]
                      if j == 0 else [str(len(ordered) - i) for i in range(len(ordered))], fontsize=7)
        ax.set_title(f"{s.title} (higher = better)", fontsize=9)
        ax.grid(axis="x", alpha=0.3)
        if rows == 2:
            ax = axes[1][j]
            ax.scatter([c.scores[s.kind] for c in validated], [statistics.fmean(c.accuracy) for c in validated])
            ax.set_xlabel(s.title, fontsize=8)
            ax.set_ylabel("fine-tuned test/acc" if j == 0 else "", fontsize=8)
            ax.grid(alpha=0.3)
    return _save(fig, path)


def _save(fig, path: Path) -> Path:
    """Written beside ``path`` and renamed into place: a failed write never leaves half a figure."""
    import os
    import tempfile

    path = Path(path)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.chmod(tmp, 0o666 & ~umask())  # as the run's other files, not mkstemp's 0600
        with os.fdopen(fd, "wb") as f:
            fig.savefig(f, dpi=110, format=path.suffix.lstrip(".") or "png")
        os.replace(tmp, path)
        tmp = None
    finally:
        plt.close(fig)
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
    return path
