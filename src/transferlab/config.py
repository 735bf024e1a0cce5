"""Composing configs outside and inside a Hydra app, and reading saved ones (refusing code and interpolations).

Checking a config's values is ``plan.validate``'s job, as part of resolving the run's plan.
"""
from __future__ import annotations

from contextlib import contextmanager

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, OmegaConf, open_dict

from transferlab import CONF_DIR, rundir  # noqa: F401 - rundir registers the run-dir resolvers
from transferlab.errors import ConfigError

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


def check_saved(node, where: str, key: str = "") -> None:
    """Refuse a config from disk (a run's config.yaml, a checkpoint's) that names code or hides values.

    transferlab writes saved configs fully resolved, with implementations named by registry name
    (``strategy.kind``, ``logger.<entry>.kind``), so a ``_target_`` (an import path Hydra would call)
    or an interpolation (resolved later, past any check) can only come from someone else's hand."""
    if isinstance(node, dict):
        if "_target_" in node:
            raise ConfigError(f"{where} sets {key + '.' if key else ''}_target_={node['_target_']!r}: a saved config "
                              f"may not name code to instantiate (not allowed; transferlab chooses implementations by "
                              f"registry name). Refusing to use it")
        for k, value in node.items():
            check_saved(value, where, f"{key}.{k}" if key else str(k))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            check_saved(value, where, f"{key}[{i}]")
    elif isinstance(node, str) and "${" in node:
        raise ConfigError(f"{where} sets {key}={node!r}: a saved config is fully resolved, so an interpolation "
                          f"there is not allowed (it would be resolved after every check). Refusing to use it")


def load_run_config(run_dir) -> DictConfig:
    """A finished or interrupted run's resolved config.yaml, after ``check_saved``."""
    from pathlib import Path

    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise ConfigError(f"'{run_dir}' is not a transferlab run directory: it has no config.yaml")
    try:
        cfg = OmegaConf.load(path)
    except Exception as e:  # noqa: BLE001 - YAML errors of all kinds
        raise ConfigError(f"'{path}' is not a readable config: {e}") from None
    check_saved(OmegaConf.to_container(cfg, resolve=False), str(path))
    return cfg


def to_plain(cfg: DictConfig) -> dict:
    """A resolved, plain-Python copy (what config.yaml, W&B and checkpoints hold)."""
    return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)


def set_value(cfg: DictConfig, key: str, value) -> None:
    with open_dict(cfg):
        OmegaConf.update(cfg, key, value, merge=False)
