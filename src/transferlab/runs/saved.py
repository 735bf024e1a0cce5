"""Saved configs: versioned, upgraded on load, and refused when they name code or hide values.

A run's ``config.yaml`` and the config inside its checkpoints carry ``config_version``. A config of an
older version is upgraded when it is read, as Lightning migrates old checkpoints, so ``tl-eval``,
``tl-reproduce``, ``tl-fuse``, ``resume=`` and the report read runs of every version the same way.
Version 1 (no ``config_version``) is every config written before the key existed.
"""
from __future__ import annotations

import copy
from pathlib import Path

from transferlab.errors import ConfigError

VERSION = 2
KEY = "config_version"


def _renamed(node: dict, old: str, new: str) -> dict:
    """``node`` with key ``old`` spelt ``new``, in the same position."""
    if not isinstance(node, dict) or old not in node:
        return node
    return {new if k == old else k: v for k, v in node.items()}


def _data_v2(data: dict) -> dict:
    data = _renamed(data, "name", "label")
    if isinstance(data, dict) and data.get("kind") == "torchvision" and "dataset" not in data:
        data = {**data, "dataset": data.get("label")}  # the set was chosen by its display name
    if isinstance(data, dict):
        data.pop("mlm", None)  # masked-language modelling is a task now (tasks.<name>.kind: mlm)
        if isinstance(data.get("corruption"), dict):
            data["corruption"] = _renamed(data["corruption"], "name", "kind")
    return data


def _task_v2(task: dict | None, mlm: dict | None) -> dict | None:
    if not isinstance(task, dict):
        return task
    task = _renamed(task, "label", "column")
    if mlm and task.get("column") == "token":  # v1 spelt an MLM task as data.mlm + the token column
        task = {"kind": "mlm", "column": "token", "num_classes": mlm.get("vocab_size"),
                "probability": mlm.get("probability", 0.15),
                **{k: v for k, v in task.items() if k not in ("column", "num_classes")}}
    elif "kind" not in task:
        task = {"kind": "classification", **task}
    if isinstance(task.get("data"), dict) and task["data"]:
        task["data"] = _data_v2(task["data"])
    return task


def _v1_to_v2(c: dict) -> dict:
    """Version 2: one key, ``kind``, picks the implementation in every group; display names are ``label``;
    a task's label column is ``column``; masked-language modelling is a task kind."""
    c = dict(c)
    if isinstance(c.get("model"), dict):
        c["model"] = _renamed(c["model"], "family", "kind")
        c["model"].setdefault("kind", "timm")
    mlm = c.get("data", {}).get("mlm") if isinstance(c.get("data"), dict) else None
    for group in ("optimizer", "scheduler", "fusion"):
        c[group] = _renamed(c.get(group), "name", "kind") if group in c else None
        if c[group] is None:
            del c[group]
    if isinstance(c.get("strategy"), dict):
        c["strategy"] = _renamed(c["strategy"], "name", "label")
    if isinstance(c.get("data"), dict):
        c["data"] = _data_v2(c["data"])
    if isinstance(c.get("eval_sets"), dict):
        c["eval_sets"] = {k: _data_v2(v) for k, v in c["eval_sets"].items()}
    if isinstance(c.get("tasks"), dict):
        c["tasks"] = {k: _task_v2(v, mlm) for k, v in c["tasks"].items()}
    multitask = c.get("multitask")
    if isinstance(multitask, dict) and isinstance(multitask.get("loss_weighting"), str):
        c["multitask"] = {**multitask, "loss_weighting": {"kind": multitask["loss_weighting"]}}
    if isinstance(c.get("where"), dict):  # a fusion's filter on its ingredients' settings
        c["where"] = {{"strategy.name": "strategy.label"}.get(k, k): v for k, v in c["where"].items()}
    return c


UPGRADES = {1: _v1_to_v2}  # version -> the function that lifts it one version


def version_of(config: dict) -> int:
    return int(config.get(KEY, 1)) if isinstance(config, dict) else 1


def upgrade(config: dict, where: str = "a saved config") -> dict:
    """A plain config of any earlier version as this version writes it (a deep copy; the input is kept)."""
    version = version_of(config)
    if version > VERSION:
        raise ConfigError(f"{where} has config_version {version}, newer than this transferlab's ({VERSION}); "
                          f"upgrade transferlab to read it")
    config = copy.deepcopy(config)
    while version < VERSION:
        config = UPGRADES[version](config)
        version += 1
    return {KEY: VERSION, **{k: v for k, v in config.items() if k != KEY}}


def upgrade_tasks(tasks: list[dict]) -> list[dict]:
    """A checkpoint's task records (``hyper_parameters.tasks``) of any version: ``column`` names the label column."""
    return [_renamed(dict(t), "label", "column") for t in tasks]


def check_saved(node, where: str, key: str = "") -> None:
    """Refuse a config from disk (a run's config.yaml, a checkpoint's) that names code or hides values.

    transferlab writes saved configs fully resolved, with implementations named by registry name
    (``kind``), so a ``_target_`` (an import path Hydra would call) or an interpolation (resolved
    later, past any check) can only come from someone else's hand."""
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


def read_config(path: Path) -> dict:
    """A saved config file, checked and upgraded; a ConfigError naming the file when it cannot be read."""
    import yaml

    path = Path(path)
    try:
        config = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise ConfigError(f"'{path}' is not a readable config: {str(e).splitlines()[0]}") from None
    if not isinstance(config, dict):
        raise ConfigError(f"'{path}' is not a readable config: it holds {type(config).__name__}, not a mapping")
    check_saved(config, str(path))
    return upgrade(config, str(path))
