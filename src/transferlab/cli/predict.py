"""``tl-predict ckpt_path=PATH inputs=PATH``: a finished model's predictions on new inputs."""
from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from transferlab import CONF_DIR, console
from transferlab.cli import user_errors
from transferlab.config import renamed


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="predict")
def task(cfg: DictConfig) -> None:
    console.setup()
    with user_errors():
        from transferlab.deploy.predict import predict  # torch comes once the command line is sound

        summary = predict(cfg)
    shown = "  ".join(f"{k}={v:.4f}" for k, v in summary.items() if isinstance(v, float))
    console.show(f"run directory: {cfg.paths.run_dir}\npredicted {summary['predicted']} of {summary['inputs']} inputs"
                 + (f" ({summary['failed']} unreadable: see the error column)" if summary["failed"] else "")
                 + (f"\n{shown}" if shown else ""))


def main() -> None:
    # `inputs=PATH` and `fusion=DIR` are the words the docs use (`fusion` is also the config group of tl-fuse)
    sys.argv = renamed(renamed(sys.argv, "inputs", "inputs.path"), "fusion", "fusion_dir")
    task()


if __name__ == "__main__":
    main()
