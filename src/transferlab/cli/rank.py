"""``tl-rank candidates=[...] [data=...]`` | ``experiment=rank_sources``: rank candidate sources by transferability."""
from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig, OmegaConf

from transferlab import CONF_DIR, console
from transferlab.cli import user_errors
from transferlab.config import renamed
from transferlab.errors import ConfigError


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="rank")
def task(cfg: DictConfig) -> None:
    console.setup()
    with user_errors():
        if OmegaConf.is_missing(cfg, "candidates"):
            raise ConfigError("candidates is required: tl-rank candidates='[{model: tiny}, {source: none}]' (tl-train "
                              "overrides, or run directories), or tl-rank experiment=rank_sources")
        from transferlab.transferability.rank import rank  # torch comes once the command line is sound

        summary = rank(cfg)
    lines = [f"run directory: {cfg.paths.run_dir}"]
    for score, ordered in summary["ranking"].items():
        tau = summary.get(f"{score}/weighted_tau")
        lines.append(f"{score}: " + "  >  ".join(f"{label} ({value:.4f})" for label, value in ordered) +
                     (f"   [weighted tau vs fine-tuned test/acc: {tau:.3f}]" if tau is not None else ""))
    console.show("\n".join(lines))


def main() -> None:
    # `experiment=` is the word the docs use; tl-rank's recipes are the `ranking` group
    sys.argv = renamed(sys.argv, "experiment", "ranking")
    task()


if __name__ == "__main__":
    main()
