"""``tl-train [overrides]``: one run, or a sweep with ``-m``. No overrides = the default experiment."""
from __future__ import annotations

import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig
from pytorch_lightning.utilities import rank_zero_info
from pytorch_lightning.utilities.exceptions import SIGTERMException

from transferlab import CONF_DIR, run
from transferlab.cli import log, user_errors
from transferlab.metrics import HEADLINE


def _summary(metrics: dict, run_dir) -> str:
    keys = [k for k in HEADLINE if k in metrics]
    return (f"run directory: {run_dir}\n" + "  ".join(f"{k}={metrics[k]:.4f}" for k in keys) +
            f"  ({metrics['strategy']}, {metrics['trainable_params']:,} of {metrics['total_params']:,} "
            f"parameters trained, {metrics['fit_seconds']:.1f}s)")


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train")
def task(cfg: DictConfig) -> float | None:
    in_sweep = HydraConfig.get().mode == RunMode.MULTIRUN
    if in_sweep and not any(a.startswith("hydra.sweep.dir=") for a in sys.argv):
        # Lightning's DDP launcher re-runs this command line for the other ranks: keep their sweep dir ours.
        sys.argv.append(f'hydra.sweep.dir="{HydraConfig.get().sweep.dir}"')
    try:
        with user_errors(in_sweep=in_sweep):
            metrics = run.train(cfg)
    except SIGTERMException:
        sys.exit(143)  # stopped from outside (128 + SIGTERM); last.ckpt is saved, the sweep stops too
    except Exception as e:
        if not in_sweep or run.pruned(e):  # a pruned trial goes back to the Optuna sweeper as pruned
            raise
        run.record_failure(cfg, e)
        log.error("job failed (%s); the sweep goes on, the report lists it as failed", e)
        return None
    rank_zero_info(_summary(metrics, cfg.paths.run_dir))
    return metrics.get(cfg.objective)


def main() -> None:
    task()


if __name__ == "__main__":
    main()
