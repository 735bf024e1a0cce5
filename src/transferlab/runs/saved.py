"""Saved configs: versioned, upgraded on load, and refused when they name code or hide values.

A run's ``config.yaml`` and the config inside its checkpoints carry ``config_version``. A config of an
older version is upgraded when it is read, as Lightning migrates old checkpoints, so ``tl-eval``,
``tl-reproduce``, ``tl-fuse``, ``resume=`` and the report read runs of every version the same way.
Version 1 (no ``config_version``) is every config written before the key existed.
"""
from __future__ import annotations

import copy
import os
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
    return _filled({KEY: VERSION, **{k: v for k, v in config.items() if k != KEY}})


# --- groups an older config may lack --------------------------------------------------------------
# A training run's config (it has a strategy) needs these; a missing one cannot be filled in from
# today's defaults without perhaps changing what the run does, so reading it to train is refused.
REQUIRED = ("seed", "model", "data", "tasks", "multitask", "strategy", "optimizer", "scheduler", "trainer")


def _defaults(group: str):
    """A group's value in today's conf/train.yaml (plain, as written there)."""
    import yaml

    from transferlab import CONF_DIR

    return copy.deepcopy(yaml.safe_load((CONF_DIR / "train.yaml").read_text()).get(group))


def _filled(config: dict) -> dict:
    """A training run's config with the groups it lacks filled in where that cannot change what the run
    does: how it logs and reports, and the settings of features it could not have used (no source run:
    its weights are ``model.checkpoint``; one task: multi-task sampling and weighting have nothing to mix)."""
    if "strategy" not in config or "fusion" in config:
        return config
    tasks = config.get("tasks")
    fill = {"eval_sets": {}, "ckpt_path": None, "resume": None, "optuna_trial": None, "verbose": False,
            "logger": {}, "source": {"overrides": [], "cache_dir": None}, "regularizer": {"kind": "none"}}
    if isinstance(tasks, dict) and sum(t is not None for t in tasks.values()) <= 1:
        fill["multitask"] = _defaults("multitask")
    if "objective" not in config:
        fill["objective"] = _defaults("objective")
    data, strategy = config.get("data"), config.get("strategy")
    if isinstance(data, dict) and isinstance(strategy, dict) and data.get("label") and strategy.get("label"):
        fill["experiment_name"] = f"{data['label']}_{strategy['label']}"
    for key, value in fill.items():
        if key not in config:
            config[key] = value
    return config


def require_complete(config: dict, where: str) -> None:
    """Refuse a saved training config that lacks a group which cannot be filled in (``_filled``),
    naming the key and the file."""
    for key in REQUIRED:
        if config.get(key) is None:
            extra = ""
            if key == "multitask" and isinstance(config.get("tasks"), dict):
                n = sum(t is not None for t in config["tasks"].values())
                extra = f" (the run has {n} tasks, whose sampling, loss weighting and monitored task it sets)"
            raise ConfigError(f"{where} has no '{key}'{extra}: a config saved by an older transferlab, or edited; "
                              f"today's default could change what the run does, so it is not filled in. Add the "
                              f"'{key}' the run used to that file, or start a new run")


# --- settings that name the user's files ----------------------------------------------------------
# Stored absolute in a saved config (plan.resolve), so a run can be reproduced, resumed or evaluated
# from any folder. Outputs and caches (paths.*, tokenizer.cache_dir, source.cache_dir) are not here.
MODEL_PATHS = ("checkpoint", "path", "tokenizer.path")
DATA_PATHS = ("root", "manifest", "path", "train", "val", "test", "data_files")
# per data kind: the keys that always name files; the other DATA_PATHS keys of a kind are paths only
# when they exist (hf_datasets' path is a hub name or builder unless it is a folder on disk)
DATA_FILES = {"image_folder": ("root",), "csv": ("manifest", "root"), "torchvision": ("root",),
              "text_files": ("path", "train", "val", "test")}


def _relative(value) -> bool:
    return (isinstance(value, str) and bool(value) and not os.path.isabs(value) and not value.startswith("~")
            and "://" not in value and "${" not in value)


def _node(config: dict, key: str):
    node = config
    for part in key.split("."):
        if not isinstance(node, dict):
            return None
        node = node.get(part)
    return node


def path_settings(config: dict) -> list[tuple[dict, object, str, bool]]:
    """``(container, key, name, surely_a_path)`` of every setting that names a user's file and holds a
    relative path (``name``: the dotted key, e.g. ``eval_sets.noisy.root``, ``data.data_files[0]``)."""
    found = []

    def add(container, key, name, sure):
        value = container.get(key) if isinstance(container, dict) else None
        if isinstance(value, list):
            for i, v in enumerate(value):
                if _relative(v):
                    found.append((value, i, f"{name}[{i}]", sure))
        elif isinstance(value, dict) and key == "data_files":
            for k, v in value.items():
                add(value, k, f"{name}.{k}", sure)
        elif _relative(value):
            found.append((container, key, name, sure))

    if _relative(config.get("ckpt_path")):
        found.append((config, "ckpt_path", "ckpt_path", True))
    model = config.get("model")
    if isinstance(model, dict):
        for key in MODEL_PATHS:
            *parents, last = key.split(".")
            add(_node(model, ".".join(parents)) if parents else model, last, f"model.{key}", True)
    data = config.get("data") if isinstance(config.get("data"), dict) else {}
    nodes = [("data", data)]
    nodes += [(f"eval_sets.{n}", d) for n, d in (config.get("eval_sets") or {}).items() if isinstance(d, dict)]
    nodes += [(f"tasks.{n}.data", t.get("data")) for n, t in (config.get("tasks") or {}).items()
              if isinstance(t, dict) and isinstance(t.get("data"), dict)]
    for where, node in nodes:
        kind = node.get("kind") or data.get("kind")
        for key in DATA_PATHS:
            add(node, key, f"{where}.{key}", key in DATA_FILES.get(kind, ()))
    return found


def absolute_paths(config: dict, base) -> list[tuple[str, str]]:
    """Make the relative paths of ``config`` (plain, changed in place) absolute against ``base`` (the
    folder they were given in); a value that may be a name (a hub dataset) only where it exists there.
    Returns ``(name, value)`` of those left as they were."""
    left = []
    for container, key, name, sure in path_settings(config):
        value = container[key]
        candidate = os.path.normpath(os.path.join(str(base), value))
        if sure or os.path.exists(candidate):
            container[key] = candidate
        else:
            left.append((name, value))
    return left


def locate_paths(config: dict, started_in) -> list[tuple[str, str]]:
    """A saved config's relative paths (runs saved before they were stored absolute) made absolute:
    against the folder the run was started in when it recorded one (``started_in``), else against this
    folder where they name something here. Returns ``(name, value)`` of the paths that cannot be found."""
    if started_in:
        absolute_paths(config, started_in)
        return []
    lost = []
    for container, key, name, sure in path_settings(config):
        candidate = os.path.abspath(container[key])
        if os.path.exists(candidate):
            container[key] = candidate
        elif sure:
            lost.append((name, container[key]))
    return lost


def lost_path_error(where: str, name: str, value: str, command: str) -> ConfigError:
    return ConfigError(f"{where} sets {name}={value!r}, a path relative to the folder that run was started from, "
                       f"which it did not record (runs saved before transferlab stored absolute paths); from here "
                       f"({os.getcwd()}) it names nothing. Run {command} from that folder, or write the absolute "
                       f"path into that file")


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
