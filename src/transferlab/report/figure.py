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

from transferlab.report.collect import read_history  # noqa: E402
from transferlab.report.table import Row  # noqa: E402


def mean_curve(row: Row, metric: str = "val/acc") -> tuple[list[int], list[float], list[float]]:
    """Epochs, mean and std over the row's seeds of ``metric``, epochs where at least one seed logged it."""
    histories = [h for h in (read_history(r.dir, metric) for r in row.runs) if h]
    epochs = sorted(set().union(*histories)) if histories else []
    values = [[h[e] for h in histories if e in h] for e in epochs]
    return (epochs, [statistics.fmean(v) for v in values],
            [statistics.stdev(v) if len(v) > 1 else 0.0 for v in values])


def plot(rows: list[Row], path: Path, metric: str = "test/acc") -> Path:
    colors = plt.get_cmap("tab10" if len(rows) <= 10 else "tab20").colors
    color = {row.label: colors[i % len(colors)] for i, row in enumerate(rows)}
    width = max(11.0, 5.0 + 0.9 * len(rows))
    fig, (bars, curves) = plt.subplots(1, 2, figsize=(width, 5.2), gridspec_kw={"width_ratios": [1.1, 1]})

    x = range(len(rows))
    means, stds = [row.mean(metric) for row in rows], [row.std(metric) for row in rows]
    drawn = bars.bar(x, means, yerr=stds, capsize=5, color=[color[r.label] for r in rows],
                     edgecolor="black", linewidth=[2.5 if r.best else 0 for r in rows], alpha=0.9)
    for rect, row, mean, std in zip(drawn, rows, means, stds):
        text = f"{mean:.3f} ± {std:.3f}\nn={len(row.runs)}" + (", best" if row.best else "")
        bars.annotate(text, (rect.get_x() + rect.get_width() / 2, mean + std + 0.01), ha="center", va="bottom",
                      fontsize=8, fontweight="bold" if row.best else "normal")
    ticks = [row.label.replace(", ", "\n") for row in rows]
    long = max((len(t) for label in ticks for t in label.split("\n")), default=0) > 14 or len(rows) > 5
    bars.set_xticks(list(x), ticks, rotation=30 if long else 0, ha="right" if long else "center", fontsize=9)
    bars.set_ylim(0, 1.15)  # room for the labels above a bar near 1
    bars.set_yticks([0, 0.2, 0.4, 0.6, 0.8, 1.0])
    bars.set_ylabel(metric)
    bars.set_title(f"{metric}: mean ± std over seeds")
    bars.grid(axis="y", alpha=0.3)

    plotted = 0
    for row in rows:
        epochs, mean, std = mean_curve(row)
        if not epochs:
            continue
        plotted += 1
        c = color[row.label]
        curves.plot(epochs, mean, marker="o", markersize=3, color=c, label=f"{row.label} (n={len(row.runs)})")
        curves.fill_between(epochs, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)],
                            color=c, alpha=0.15, linewidth=0)
    if plotted:
        curves.legend(fontsize=8, loc="lower right")
    else:
        curves.text(0.5, 0.5, "no per-epoch history\n(runs have no csv/metrics.csv)", ha="center",
                    va="center", transform=curves.transAxes, color="gray")
    curves.xaxis.set_major_locator(MaxNLocator(integer=True))
    curves.set_ylim(0, 1.05)
    curves.set_xlabel("epoch")
    curves.set_ylabel("val/acc")
    curves.set_title("val/acc per epoch: mean over seeds (band: ± std)")
    curves.grid(alpha=0.3)

    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
