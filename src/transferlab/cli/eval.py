"""``tl-eval ckpt_path=PATH [data=...]``: test a checkpoint (every task of it) on its data or another."""
from __future__ import annotations

from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from transferlab import CONF_DIR, console
from transferlab.cli import user_errors
from transferlab.errors import ConfigError
from transferlab.plan import from_checkpoint


def checkpoint_plan(ckpt_path: str, cfg: DictConfig) -> DictConfig:
    """The plan a checkpoint was trained with, on this command's data, evaluation sets and loggers."""
    overrides = {"paths.run_dir": cfg.paths.run_dir, "logger": OmegaConf.to_container(cfg.logger, resolve=False)}
    if cfg.logger and "wandb" in cfg.logger:
        overrides["logger.wandb.job_type"] = "eval"  # tell evaluations apart from training runs
    for key in ("data", "eval_sets"):
        if cfg.get(key) is not None:
            overrides[key] = OmegaConf.to_container(cfg[key], resolve=False)
    return from_checkpoint(ckpt_path, overrides)


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="eval")
def task(cfg: DictConfig) -> None:
    console.setup()
    with user_errors():
        if OmegaConf.is_missing(cfg, "ckpt_path"):
            raise ConfigError("ckpt_path is required: tl-eval ckpt_path=PATH/TO/checkpoints/best.ckpt [data=...]")
        from transferlab import run  # torch, timm and Lightning: once the command line is sound

        metrics = run.evaluate(checkpoint_plan(cfg.ckpt_path, cfg), cfg.ckpt_path, Path(cfg.paths.run_dir))
    console.show("run directory: %s\n%s", cfg.paths.run_dir,
                 "  ".join(f"{k}={v:.4f}" for k, v in sorted(metrics.items()) if isinstance(v, float)))


def main() -> None:
    task()


if __name__ == "__main__":
    main()
