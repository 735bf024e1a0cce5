"""``tl-eval ckpt_path=PATH [data=...]``: test a checkpoint (every task of it) on its data or another."""
from __future__ import annotations

from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from transferlab import CONF_DIR, run
from transferlab.cli import user_errors
from transferlab.checkpoints import read_checkpoint
from transferlab.config import check_targets
from transferlab.errors import ConfigError
from transferlab.plan import resolve


def checkpoint_plan(ckpt_path: str, cfg: DictConfig) -> DictConfig:
    """The plan a checkpoint was trained with, its weights coming from the checkpoint itself."""
    hparams = read_checkpoint(ckpt_path).get("hyper_parameters", {})
    saved = hparams.get("config")
    if not saved:
        raise ConfigError(f"'{ckpt_path}' is not a transferlab checkpoint (it holds no run config); "
                          f"to start a run from foreign weights use tl-train model.checkpoint=...")
    check_targets(saved, f"the config inside '{ckpt_path}'")
    overrides = {"model.checkpoint": None, "model.pretrained": False, "source": None, "resume": None,
                 "ckpt_path": None, "paths.run_dir": cfg.paths.run_dir, "logger": OmegaConf.to_container(cfg.logger, resolve=False),
                 "trainer.devices": 1, "trainer.num_nodes": 1, "trainer.strategy": "auto"}
    if cfg.logger and "wandb" in cfg.logger:
        overrides["logger.wandb.job_type"] = "eval"  # tell evaluations apart from training runs
    for task in hparams.get("tasks", []):  # a dataset with another class count is then a clear error
        overrides[f"tasks.{task['name']}.num_classes"] = task["num_classes"]
    if cfg.get("data") is not None:
        overrides["data"] = OmegaConf.to_container(cfg.data, resolve=False)
    return resolve(OmegaConf.create(saved), overrides)


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="eval")
def task(cfg: DictConfig) -> None:
    with user_errors():
        if OmegaConf.is_missing(cfg, "ckpt_path"):
            raise ConfigError("ckpt_path is required: tl-eval ckpt_path=PATH/TO/checkpoints/best.ckpt [data=...]")
        metrics = run.evaluate(checkpoint_plan(cfg.ckpt_path, cfg), cfg.ckpt_path, Path(cfg.paths.run_dir))
    print(f"run directory: {cfg.paths.run_dir}")
    print("  ".join(f"{k}={v:.4f}" for k, v in sorted(metrics.items()) if isinstance(v, float)))


def main() -> None:
    task()


if __name__ == "__main__":
    main()
