"""Aggregate finished runs into ``report.md``, ``report.csv`` and ``report.png`` (``tl-report``, sweeps).

    from transferlab.report import write_report
    report = write_report(["outputs/multirun/digits_finetune/2024-01-01_00-00-00"])
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from transferlab.errors import ConfigError
from transferlab.report.collect import Run, find_runs
from transferlab.report.table import Row, build_rows, markdown, select, write_csv


@dataclass
class Report:
    rows: list[Row]
    runs: list[Run]
    markdown: str
    paths: list[Path]
    study: dict | None = None  # the sweep's Optuna study (optimization_results.yaml), if it was one


def write_report(dirs, out=None, select_by: str | None = None) -> Report:
    """Write the three report files into ``out`` (default: the first directory).

    ``select_by`` (a validation metric, e.g. ``val/acc_best``): rows that differ only in tuned
    hyperparameters (``table.TUNED``) collapse to the one with the best mean of it over seeds."""
    dirs = [Path(d) for d in dirs]
    for d in dirs:
        if not d.is_dir():
            raise ConfigError(f"'{d}' is not a directory; tl-report takes run or sweep directories")
    runs = find_runs(dirs)
    if not runs:
        raise ConfigError(f"no transferlab runs under {', '.join(map(str, dirs))}: no directory there holds "
                          f"a config.yaml, metrics.json or failed.json (give a run, sweep or outputs directory)")
    out = Path(out) if out is not None else dirs[0]
    out.mkdir(parents=True, exist_ok=True)
    rows, run_labels = build_rows(runs)
    if select_by:
        rows = select(rows, select_by)
    paths = [out / "report.md", out / "report.csv"]
    figures = []
    if rows:
        from transferlab.report.figure import plot, plot_alpha  # matplotlib only when there is something to draw

        figures = [p for p in (plot(rows, out / "report.png"), plot_alpha(rows, out / "fusion.png")) if p]
        paths += figures
    study = _study(dirs[0])
    if study and (dirs[0] / HISTORY).is_file():
        figures.append(dirs[0] / HISTORY)
    text = markdown(rows, runs, run_labels, dirs, [os.path.relpath(p, out) for p in figures], select_by, study)
    paths[0].write_text(text)
    write_csv(paths[1], rows, runs, run_labels)
    return Report(rows, runs, text, paths, study)


HISTORY = "optimization_history.png"  # beside optimization_results.yaml, written by the Optuna sweeper


def _study(sweep_dir: Path) -> dict | None:
    """The Optuna sweeper's summary of its study, when the directory is an Optuna search."""
    import yaml

    path = sweep_dir / "optimization_results.yaml"
    try:
        return yaml.safe_load(path.read_text()) if path.is_file() else None
    except (OSError, yaml.YAMLError):
        return None


__all__ = ["Report", "Run", "Row", "find_runs", "write_report"]
