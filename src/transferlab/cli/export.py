"""``tl-export ckpt_path=PATH format=timm|hf|onnx|safetensors``: a finished model for other tools."""
from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from transferlab import CONF_DIR, console
from transferlab.cli import user_errors
from transferlab.config import renamed


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="export")
def task(cfg: DictConfig) -> None:
    console.setup()
    with user_errors():
        from transferlab.deploy.export import export  # torch comes once the command line is sound

        record = export(cfg)
    check = record["check"]
    console.show(f"exported {record['format']} to {record['folder']}\nchecked with {check['loaded_with']}: largest "
                 f"probability difference {check['max_abs_diff']:.3g} (tolerance {check['tolerance']:g})")


def main() -> None:
    # `fusion=DIR` and `task=NAME` are the words the docs use; both are also config groups of other commands
    sys.argv = renamed(renamed(sys.argv, "fusion", "fusion_dir"), "task", "task_name")
    task()


if __name__ == "__main__":
    main()
