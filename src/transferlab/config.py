"""Composing configs outside and inside a Hydra app, and reading saved ones (allowlist-checked).

Checking a config's values is ``plan.validate``'s job, as part of resolving the run's plan.
"""
from __future__ import annotations

from contextlib import contextmanager

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, OmegaConf, open_dict

from transferlab import CONF_DIR
from transferlab.errors import ConfigError

def _resume_dir(resume, default):
    """Hydra's run dir: a resumed run continues in its own directory, if that is a run directory."""
    from pathlib import Path

    return resume if resume and (Path(str(resume)) / "config.yaml").is_file() else default


OmegaConf.register_new_resolver("tl.resume_dir", _resume_dir, replace=True)

# What a saved config may instantiate (tl-train resume=, tl-reproduce, tl-eval): classes of these
# packages only. Not whole libraries: `torch.load` or `torch.hub.load` would run a stranger's code.
ALLOWED_TARGETS = ("transferlab.", "pytorch_lightning.loggers.", "pytorch_lightning.callbacks.",
                   "lightning.pytorch.loggers.", "lightning.pytorch.callbacks.", "torch.optim.",
                   "torchvision.transforms.", "timm.data.", "timm.optim.", "timm.scheduler.")


@contextmanager
def _hydra_ready():
    if GlobalHydra.instance().is_initialized():
        yield
    else:
        with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
            yield


def compose_config(overrides: list[str], config_name: str = "train") -> DictConfig:
    """The config ``tl-train <overrides>`` would run with (usable inside or outside a Hydra app)."""
    with _hydra_ready():
        return compose(config_name=config_name, overrides=list(overrides))


def check_targets(node, where: str) -> None:
    """Refuse a config from disk that would instantiate anything outside the allowed packages."""
    if isinstance(node, dict):
        target = node.get("_target_")
        if target is not None and not str(target).startswith(ALLOWED_TARGETS):
            raise ConfigError(f"{where} asks to instantiate '{target}', which is not allowed; a saved config may "
                              f"only name classes from: {', '.join(p.rstrip('.') for p in ALLOWED_TARGETS)}")
        for value in node.values():
            check_targets(value, where)
    elif isinstance(node, list):
        for value in node:
            check_targets(value, where)


def load_run_config(run_dir) -> DictConfig:
    """A finished or interrupted run's resolved config.yaml, after the _target_ allowlist check."""
    from pathlib import Path

    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise ConfigError(f"'{run_dir}' is not a transferlab run directory: it has no config.yaml")
    try:
        cfg = OmegaConf.load(path)
    except Exception as e:  # noqa: BLE001 - YAML errors of all kinds
        raise ConfigError(f"'{path}' is not a readable config: {e}") from None
    check_targets(OmegaConf.to_container(cfg), str(path))
    return cfg


def to_plain(cfg: DictConfig) -> dict:
    """A resolved, plain-Python copy (what config.yaml, W&B and checkpoints hold)."""
    return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)


def set_value(cfg: DictConfig, key: str, value) -> None:
    with open_dict(cfg):
        OmegaConf.update(cfg, key, value, merge=False)
