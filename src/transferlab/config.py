"""Composing configs outside and inside a Hydra app; the plain-Python helpers the plan uses.

Reading saved configs (checked, versioned, upgraded) is ``runs``'; checking a config's values is each
registry entry's, while ``plan.resolve`` builds the plan.
"""
from __future__ import annotations

from contextlib import contextmanager

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, OmegaConf, open_dict

from transferlab import CONF_DIR, runs

runs.register_resolvers()  # ${tl.run_dir:...} in conf/hydra/default.yaml


@contextmanager
def hydra_ready():
    """Hydra's global config search path for this block (left as it was found, so calls do not leak)."""
    if GlobalHydra.instance().is_initialized():
        yield
    else:
        with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
            yield


def compose_config(overrides: list[str], config_name: str = "train", hydra: bool = False) -> DictConfig:
    """The config ``tl-<command> <overrides>`` would run with (usable inside or outside a Hydra app);
    ``hydra``: with Hydra's own node (its run directory pattern, callbacks)."""
    with hydra_ready():
        return compose(config_name=config_name, overrides=list(overrides), return_hydra_config=hydra)


def to_plain(cfg: DictConfig) -> dict:
    """A resolved, plain-Python copy (what config.yaml, W&B and checkpoints hold)."""
    return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)


def set_value(cfg: DictConfig, key: str, value) -> None:
    with open_dict(cfg):
        OmegaConf.update(cfg, key, value, merge=False)


def renamed(args, word: str, group: str) -> list[str]:
    """``word=X`` -> ``group=X`` in command-line overrides: the word the docs use for a config group
    (tl-fuse ``method=`` for ``fusion=``, tl-rank ``experiment=`` for ``ranking=``)."""
    return [f"{group}={a.split('=', 1)[1]}" if isinstance(a, str) and a.startswith(f"{word}=") else a for a in args]
