"""Write the report into the sweep directory when a multirun ends, and log it to one W&B summary run.

Enabled in ``conf/hydra/default.yaml``::

    callbacks:
      report:
        _target_: transferlab.report.callback.ReportCallback
        select_by: null  # or val/acc_best: compare settings each at its best tuned hyperparameters
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, open_dict

from transferlab import metrics as names
from transferlab.errors import TransferlabError
from transferlab.report import HISTORY, Report, write_report

log = logging.getLogger(__name__)


def _wanted(config: DictConfig) -> bool:
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
    run = wandb.init(project=project, group=group, job_type="report", name=f"report-{group}", dir=str(out),
                     mode=os.environ.get("WANDB_MODE", "offline"),
                     config={"sweep_dir": str(out.resolve()), "runs": len(report.runs)})
    try:
        payload = {"report/table": wandb.Table(columns=columns, data=data)}
        figures = {"report/figure": out / "report.png", "report/optimization_history": out / HISTORY}
        payload.update({key: wandb.Image(str(path)) for key, path in figures.items() if path.is_file()})
        run.log(payload)
        run.summary.update({f"report/{s}_runs": sum(r.status == s for r in report.runs)
                            for s in ("finished", "pruned", "failed", "incomplete")})
        if report.study:  # the Optuna study: best value and parameters, importances, trial counts
            run.summary.update({f"optuna/{k}": report.study[k] for k in
                                ("study_name", "best_value", "best_params", "importances", "trials") if k in report.study})
    finally:
        wandb.finish()


def fuse_sweep(sweep_dir: Path, fusions: list, config: DictConfig) -> None:
    """The sweep's fusions, each into ``<sweep>/fuse/<method>[_s<seed>]`` (rows of the same report).

    A fusion is ``{method: wise_ft, between: [STRATEGY_0, STRATEGY_1]}`` (θ_0 and θ_1 of each seed) or
    ``{method: greedy_soup | uniform_soup | ensemble, where: {strategy.name: ...}}`` (one over the
    sweep). A fusion that cannot run is a warning: the strategies' report still gets written."""
    from transferlab.config import compose_config, set_value
    from transferlab.fusion import fuse
    from transferlab.report.collect import find_runs

    runs = [r for r in find_runs([sweep_dir]) if r.status == "finished" and "strategy" in r.config]
    for spec in fusions:
        spec = OmegaConf.to_container(spec) if isinstance(spec, DictConfig) else dict(spec)
        jobs = []  # (output name, settings)
        if spec.get("between"):
            for seed in sorted({r.setting("seed") for r in runs}):
                ends = [[r for r in runs if r.setting("strategy.name") == s and r.setting("seed") == seed]
                        for s in spec["between"]]
                if all(len(e) == 1 for e in ends):
                    jobs.append((f"{spec['method']}_s{seed}", {"runs": [str(e[0].dir) for e in ends]}))
                else:
                    log.warning("%s for seed %s skipped: needs exactly one finished run of each of %s, found %s",
                                spec["method"], seed, spec["between"], [len(e) for e in ends])
        else:
            jobs.append((spec["method"], {"sweep": str(sweep_dir), "where": spec.get("where") or {}}))
        for name, settings in jobs:
            out = sweep_dir / "fuse" / name
            if (out / "metrics.json").is_file():
                continue  # fused already (a sweep re-reported): keep it
            cfg = compose_config([f"fusion={spec['method']}"], config_name="fuse")
            for key, value in {**settings, "paths.run_dir": str(out), "experiment_name": config.experiment_name,
                               **{f"fusion.{k}": v for k, v in spec.items() if k not in ("method", "between", "where")}
                               }.items():
                set_value(cfg, key, value)
            if not _wanted(config):
                set_value(cfg, "logger.wandb", None)
            try:
                fuse(cfg)
            except Exception as e:  # noqa: BLE001 - the strategies' report must still be written
                log.warning("fusion %s failed: %s", name, e)


class ReportCallback(Callback):
    def __init__(self, select_by: str | None = None, fusions: list | None = None):
        """``select_by``: a validation metric; the report then ranks each setting at its best tuned values.
        ``fusions``: run after the sweep's jobs, before the report (``fuse_sweep``)."""
        self.select_by, self.fusions = select_by, list(fusions or [])

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        """One sweep, one name: ``experiment_name`` defaults to ``<data>_<strategy>``, which would split a
        sweep over strategies into several folders and W&B groups. Pin it for every job of the sweep
        unless the user named it."""
        from hydra.core.override_parser.overrides_parser import OverridesParser

        parsed = OverridesParser.create().parse_overrides(list(config.hydra.overrides.task))
        keys = [o.key_or_group for o in parsed]
        swept = [o.key_or_group.split(".")[0] for o in parsed if o.is_sweep_override()]
        if "experiment_name" in keys or not {"data", "strategy"} & set(swept):
            return
        name = f"{config.data.name}_sweep"
        with open_dict(config):
            config.hydra.overrides.task.append(f"experiment_name={name}")
            config.experiment_name = name

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        from pytorch_lightning.utilities import rank_zero_only

        if rank_zero_only.rank != 0:  # a DDP sweep re-runs the sweep in every rank; rank 0 reports
            return
        sweep_dir = Path(config.hydra.sweep.dir)
        if self.fusions:
            fuse_sweep(sweep_dir, self.fusions, config)
        try:
            report = write_report([sweep_dir], select_by=self.select_by)
        except TransferlabError as e:  # e.g. every job died before writing anything
            log.warning("no report for %s: %s", sweep_dir, e)
            return
        print(f"\n{report.markdown}\nreport of {len(report.runs)} runs: " + ", ".join(str(p) for p in report.paths))
        if report.rows and _wanted(config):
            try:
                log_to_wandb(report, config)
            except Exception as e:  # noqa: BLE001 - the files are written; W&B trouble must not fail the sweep
                log.warning("the report was not logged to W&B: %s", e)
