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
from transferlab.report import Report, write_report

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
        figure = out / "report.png"
        if figure.is_file():
            payload["report/figure"] = wandb.Image(str(figure))
        run.log(payload)
        run.summary.update({f"report/{s}_runs": sum(r.status == s for r in report.runs)
                            for s in ("finished", "failed", "incomplete")})
    finally:
        wandb.finish()


class ReportCallback(Callback):
    def __init__(self, select_by: str | None = None):
        """``select_by``: a validation metric; the report then ranks each setting at its best tuned values."""
        self.select_by = select_by

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
