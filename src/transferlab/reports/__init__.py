"""Aggregate finished runs into ``report.md``, ``report.csv`` and ``report.png`` (``tl-report``, sweeps).

    from transferlab.reports import write_report
    report = write_report(["outputs/multirun/digits_finetune/2024-01-01_00-00-00"])
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from transferlab import metrics as names
from transferlab.errors import ConfigError
from transferlab.redact import argv_scrubbed
from transferlab.runs import Run, find_runs, write_atomic
from transferlab.reports.table import Row, build_rows, markdown, select, write_csv


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
    hyperparameters (``table.tuned()``, as the registries declare them) collapse to the one with the best mean of it over seeds."""
    dirs = [Path(d) for d in dirs]
    for d in dirs:
        if not d.is_dir():
            raise ConfigError(f"'{d}' is not a directory; tl-report takes run or sweep directories")
    runs = find_runs(dirs)
    if not runs:
        raise ConfigError(f"no transferlab runs under {', '.join(map(str, dirs))}: no directory there holds "
                          f"a config.yaml, metrics.json or failed.json (give a run, sweep or outputs directory)")
    out = Path(out) if out is not None else dirs[0]
    rows, run_labels = build_rows(runs)
    if select_by:
        rows = select(rows, select_by)
    try:
        _check_writable(out)
        paths = [out / "report.md", out / "report.csv"]
        figures = []
        if rows:
            from transferlab.reports.figure import plot, plot_alpha  # matplotlib only when there is something to draw

            figures = [p for p in (plot(rows, out / "report.png"), plot_alpha(rows, out / "fusion.png")) if p]
            paths += figures
        study, folder = _study(dirs)
        if study and (folder / HISTORY).is_file():
            figures.append(folder / HISTORY)
        text = markdown(rows, runs, run_labels, dirs, [os.path.relpath(p, out) for p in figures], select_by, study)
        write_atomic(paths[0], text)
        write_csv(paths[1], rows, runs, run_labels)
    except OSError as e:
        raise ConfigError(f"cannot write the report into '{out}': {e.strerror or e}; choose a folder you can "
                          f"write with --out DIR (out=... in Python)") from None
    return Report(rows, runs, text, paths, study)


def _check_writable(out: Path) -> None:
    """Before any report file is written: the folder exists (created) and takes a file."""
    import tempfile

    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryFile(dir=out):
        pass


HISTORY = "optimization_history.png"  # beside optimization_results.yaml, written by the Optuna sweeper
RESULTS = "optimization_results.yaml"


def _study(dirs: list[Path]) -> tuple[dict, Path] | tuple[None, None]:
    """The Optuna sweeper's summary of the study behind the runs, and its folder: the first directory's,
    else the newest found below the directories when all of them summarise one study (each worker of a
    shared study leaves one in its own sweep folder; the last to end saw every trial)."""
    import yaml

    found = [dirs[0] / RESULTS] if (dirs[0] / RESULTS).is_file() else [p for d in dirs for p in d.rglob(RESULTS)]
    summaries = []
    for path in found:
        try:
            summary = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError):
            continue
        if isinstance(summary, dict):
            summaries.append((path.stat().st_mtime, path, summary))
    if not summaries or len({(s.get("storage"), s.get("study_name")) for _, _, s in summaries}) > 1:
        return None, None
    _, path, summary = max(summaries, key=lambda found: found[0])
    return summary, path.parent


def wanted_wandb(config: DictConfig) -> bool:
    """Only when the sweep logs to W&B at all: ``logger=csv`` means the user chose no W&B."""
    try:
        import wandb  # noqa: F401
    except ImportError:
        return False
    loggers = OmegaConf.select(config, "logger", default=None)
    return loggers is None or "wandb" in loggers


def log_to_wandb(report: Report, config: DictConfig) -> None:
    import wandb

    project = OmegaConf.select(config, "logger.wandb.project", default=None) or "transferlab"
    group = OmegaConf.select(config, "experiment_name", default=None)
    out = report.paths[0].parent
    columns = ["setting", "best", "n_seeds", *(c for m in names.SHOWN for c in (m, f"{m}_std")),
               "trainable_params", "fit_seconds"]
    data = [[r.label, r.best, len(r.runs), *(v for m in names.SHOWN for v in (r.mean(m), r.std(m))),
             r.mean("trainable_params"), r.mean("fit_seconds")] for r in report.rows]
    with argv_scrubbed():  # W&B records the command line, which may hold a storage URL's password
        run = wandb.init(project=project, group=group, job_type="report", name=f"report-{group}", dir=str(out),
                         mode=os.environ.get("WANDB_MODE", "offline"),
                         config={"sweep_dir": str(out.resolve()), "runs": len(report.runs)})
    try:
        payload = {"report/table": wandb.Table(columns=columns, data=data)}
        figures = {"report/figure": out / "report.png", "report/optimization_history": out / HISTORY}
        payload.update({key: wandb.Image(str(path)) for key, path in figures.items() if path.is_file()})
        run.log(payload)
        run.summary.update({f"report/{s}_runs": sum(r.status == s for r in report.runs)
                            for s in ("finished", "pruned", "failed", "incomplete", "damaged")})
        if report.study:  # the Optuna study: best value and parameters, importances, trial counts
            run.summary.update({f"optuna/{k}": report.study[k] for k in
                                ("study_name", "best_value", "best_params", "importances", "trials") if k in report.study})
    finally:
        wandb.finish()


__all__ = ["Report", "Run", "Row", "find_runs", "log_to_wandb", "wanted_wandb", "write_report"]
