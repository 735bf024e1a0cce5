"""``tl-fuse method=wise_ft runs=[A,B]`` | ``method=greedy_soup sweep=DIR``: fuse finished runs, no training."""
from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from transferlab import CONF_DIR, console
from transferlab.cli import user_errors
from transferlab.config import renamed


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="fuse")
def task(cfg: DictConfig) -> None:
    from transferlab.fusion.act import fuse  # torch comes once fuse has checked the config

    console.setup()
    with user_errors():
        metrics = fuse(cfg)
    shown = [k for k in metrics if k.endswith("/acc") and not k.startswith("val/")]
    passes = metrics["forward_passes"]
    console.show(f"run directory: {cfg.paths.run_dir}\n{metrics['fusion']}: chosen {metrics['chosen']} on "
                 f"{metrics['select_by']}={metrics[metrics['select_by']]:.4f}  " +
                 "  ".join(f"{k}={metrics[k]:.4f}" for k in shown) +
                 f"  ({passes} forward pass{'es' if passes > 1 else ''} per input)")


def main() -> None:
    # `method=` is the word the docs use; the config group is `fusion`
    sys.argv = renamed(sys.argv, "method", "fusion")
    task()


if __name__ == "__main__":
    main()
