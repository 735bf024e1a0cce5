"""``tl-train [overrides]``: one run, or a sweep with ``-m``. No overrides = the default experiment.

Only Hydra and the config are imported here: ``--help``, ``--cfg job`` and every error the config
alone can show answer before torch, timm and Lightning load (``transferlab.run`` imports them once
the plan is sound).
"""
from __future__ import annotations

import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from transferlab import CONF_DIR, console
from transferlab.cli import log, user_errors
from transferlab.plan import resolve


def _summary(metrics: dict, run_dir) -> str:
    return (f"run directory: {run_dir}\n{console.headline(metrics)}  ({metrics['strategy']}, "
            f"{metrics['trainable_params']:,} of {metrics['total_params']:,} parameters trained, "
            f"{metrics['fit_seconds']:.1f}s)")


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train")
def task(cfg: DictConfig) -> float | None:
    console.setup()
    in_sweep = HydraConfig.get().mode == RunMode.MULTIRUN
    if in_sweep and not any(a.startswith("hydra.sweep.dir=") for a in sys.argv):
        # Lightning's DDP launcher re-runs this command line for the other ranks: keep their sweep dir ours.
        sys.argv.append(f'hydra.sweep.dir="{HydraConfig.get().sweep.dir}"')
    # A sweep prints one line per job (console.SweepLines), not a progress bar per job.
    quiet = {"trainer.enable_progress_bar": False} if in_sweep and not console.is_verbose(cfg) else {}
    try:
        with user_errors(in_sweep=in_sweep):
            plan = resolve(cfg, quiet)  # every error the config alone can show, before the training stack loads
            if not in_sweep and console.rank_zero():
                console.show(console.choices(plan))
            from transferlab import run

            metrics = run.train(plan)
    except SystemExit as e:  # Lightning's SIGTERMException is one (Lightning is loaded only once a run started)
        lightning = sys.modules.get("pytorch_lightning.utilities.exceptions")
        if lightning is not None and isinstance(e, lightning.SIGTERMException):
            sys.exit(143)  # stopped from outside (128 + SIGTERM); last.ckpt is saved, the sweep stops too
        raise
    except Exception as e:
        if not in_sweep:
            raise
        from transferlab import run

        if run.pruned(e):  # a pruned trial goes back to the Optuna sweeper as pruned
            raise
        run.record_failure(cfg, e)
        log.error("job failed (%s); the sweep goes on, the report lists it as failed", e)
        return None
    if not in_sweep and console.rank_zero():
        console.show(_summary(metrics, cfg.paths.run_dir))
    if cfg.get("optuna_trial") and cfg.objective not in metrics:
        # Every trial would train in vain: the Optuna sweeper stops the search on this (a plain sweep's
        # job has nothing to return to and keeps returning None).
        from transferlab.studies import missing_objective

        raise missing_objective(cfg.objective, metrics)
    return metrics.get(cfg.objective)


HELP = """usage: tl-train [group=option ...] [key=value ...] [-m]

Trains one run: a source model transferred to a target dataset by a strategy, tested on its best
checkpoint, written to outputs/runs/<experiment>/<time>/. With -m, a sweep over comma-separated
values (then a report). No arguments: the default experiment (digits 0-4 -> few-shot digits 5-9).

config groups (group=option):
{groups}

  tl-train strategy=linear_probe optimizer.lr=0.01     one run with another strategy and rate
  tl-train -m strategy=finetune,lp_ft seed=1,2,3       a sweep over strategies and seeds, then its report
  tl-train --cfg job                                   the composed config, every key commented in conf/
more: README.md (the commands, the groups, the run directory); Hydra's own flags: tl-train --hydra-help"""


def _groups() -> str:
    """The choices a user can pick: conf/<group>/<option>.yaml, without the private bases (_*.yaml)."""
    rows = []
    for group in sorted(p for p in CONF_DIR.iterdir() if p.is_dir() and p.name != "hydra"):
        options = sorted(f.stem for f in group.glob("*.yaml") if not f.name.startswith("_"))
        rows.append(f"  {group.name:<15} {', '.join(options)}")
    return "\n".join(rows)


def main() -> None:
    if {"-h", "--help"} & set(sys.argv[1:]):
        print(HELP.format(groups=_groups()))
        return
    task()


if __name__ == "__main__":
    main()
