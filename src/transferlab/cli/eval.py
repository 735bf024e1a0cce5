"""``tl-eval ckpt_path=PATH [data=...]``: test a checkpoint (every task of it) on its data or another."""
from __future__ import annotations

import hydra
from omegaconf import DictConfig, OmegaConf

from transferlab import CONF_DIR, console
from transferlab.cli import user_errors
from transferlab.errors import ConfigError


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="eval")
def task(cfg: DictConfig) -> None:
    console.setup()
    with user_errors():
        if OmegaConf.is_missing(cfg, "ckpt_path"):
            raise ConfigError("ckpt_path is required: tl-eval ckpt_path=PATH/TO/checkpoints/best.ckpt [data=...]")
        from transferlab import run  # torch, timm and Lightning: once the command line is sound
        from transferlab.api import evaluation_plan
        from transferlab.models import from_checkpoint

        loaded = from_checkpoint(cfg.ckpt_path)
        metrics = run.evaluate(evaluation_plan(cfg, loaded), loaded)
    console.show("run directory: %s\n%s", cfg.paths.run_dir,
                 "  ".join(f"{k}={v:.4f}" for k, v in sorted(metrics.items()) if isinstance(v, float)))


def main() -> None:
    task()


if __name__ == "__main__":
    main()
