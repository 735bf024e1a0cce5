"""The config tree (conf/), in the style of lightning-hydra-template's test_configs.py.

Every option of every config group found on disk composes into both root configs that use its
group; a new file is covered automatically (discovered by glob), and a test checks that no file
escapes the parametrization. Base files (``_*.yaml``) are covered through the options that
inherit them. Every key of every file carries a comment. Compose only: nothing is trained or
instantiated, and nothing but CONF_DIR is imported from transferlab.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from transferlab import CONF_DIR
from transferlab.models import FAMILIES as MODEL_FAMILIES

CONF = Path(CONF_DIR)
ROOTS = tuple(sorted(p.stem for p in CONF.glob("*.yaml")))  # root configs: conf/<root>.yaml, one per command
FILES = sorted(CONF.rglob("*.yaml"))

# Groups that exist only once another group is chosen: their options compose on top of it.
NEEDS = {"hydra/sweeper/pruner": ["hparams_search=optuna"]}
# Root configs' own required values (eval needs a checkpoint).
ROOT_FILL = {"eval": ["ckpt_path=/runs/x/checkpoints/last.ckpt"], "fuse": ["runs=[/runs/a,/runs/b]"],
             "rank": ["candidates=[{source: none},{source: digits}]"],
             "predict": ["ckpt_path=/runs/x/checkpoints/best.ckpt", "inputs.path=/data/new"],
             "export": ["ckpt_path=/runs/x/checkpoints/best.ckpt", "format=onnx"]}
# Models must say which backbone factory builds them: a family of the registry.
FAMILIES = set(MODEL_FAMILIES.names())


def _rel(path: Path) -> str:
    return path.relative_to(CONF).with_suffix("").as_posix()


def _defaults(path: Path) -> list:
    return (yaml.safe_load(path.read_text()) or {}).get("defaults", []) or []


def _groups_used_by(root: str) -> set[str]:
    """Groups named in a root config's defaults list (``optional x``/``override x`` included)."""
    groups = set()
    for entry in _defaults(CONF / f"{root}.yaml"):
        if isinstance(entry, dict):
            for key in entry:
                groups.add(key.split()[-1].lstrip("/"))
    return groups


def _is_base(path: Path) -> bool:
    return path.name.startswith("_")


def _option_cases():
    """(root, group, option, file) for every option file and every root config whose defaults name
    its group; files under conf/hydra/ belong to Hydra's own config, which every root has."""
    cases = []
    for path in FILES:
        if path.parent == CONF or _is_base(path):
            continue
        group, option = path.parent.relative_to(CONF).as_posix(), path.stem
        for root in ROOTS:
            if any(n.split("=")[0] not in _groups_used_by(root) for n in NEEDS.get(group, [])):
                continue
            if group.split("/")[0] == "hydra" or group in _groups_used_by(root):
                cases.append(pytest.param(root, group, option, path, id=f"{root}:{group}={option}"))
    return cases


OPTION_CASES = _option_cases()


@pytest.fixture(autouse=True)
def _fresh_hydra():
    GlobalHydra.instance().clear()
    yield
    GlobalHydra.instance().clear()


def _compose(root: str, overrides: list[str]) -> DictConfig:
    # return_hydra_config=True: the hydra node (conf/hydra/, sweeper and launcher plugins,
    # experiments' and hparams_search's hydra: keys) is composed and checked too.
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose(root, overrides=overrides, return_hydra_config=True)
    assert isinstance(cfg, DictConfig)
    assert isinstance(OmegaConf.to_container(cfg, resolve=False), dict)
    return cfg


def _missing(cfg: DictConfig) -> set[str]:
    """Required (???) values left outside Hydra's own node (Hydra fills that one at run time).
    Walks the unresolved container: tl-train's own resolvers (tl.*) are not registered here."""
    def walk(node, prefix):
        if isinstance(node, dict):
            for key, value in node.items():
                yield from walk(value, f"{prefix}{key}.")
        elif isinstance(node, list):
            for i, value in enumerate(node):
                yield from walk(value, f"{prefix}{i}.")
        elif node == "???":
            yield prefix[:-1]

    container = OmegaConf.to_container(cfg, resolve=False)
    return {key for key in walk(container, "") if not key.startswith("hydra.")}


@pytest.mark.parametrize("root", ROOTS)
def test_root_config_composes(root):
    cfg = _compose(root, [])
    assert "paths" in cfg and "hydra" in cfg
    assert _missing(_compose(root, ROOT_FILL.get(root, []))) == set()


@pytest.mark.parametrize(("root", "group", "option", "path"), OPTION_CASES)
def test_every_option_composes(root, group, option, path):
    overrides = [*NEEDS.get(group, []), f"{group}={option}", *ROOT_FILL.get(root, [])]
    package = path.read_text().lstrip().startswith("# @package _global_")
    # An option may leave values to the user only where its own file says so (`key: ???  # required: ...`)
    required = {f"{group.replace('/', '.')}.{key}" for key in _missing(OmegaConf.create(path.read_text()))}
    unset = _missing(_compose(root, overrides))
    assert unset <= required, f"{group}={option} leaves {sorted(unset - required)} unset without declaring them"
    cfg = _compose(root, [*overrides, *(f"{key}=/data/given" for key in sorted(unset))])
    assert _missing(cfg) == set()
    if not package and group.split("/")[0] != "hydra":
        assert isinstance(cfg[group.replace("/", ".")], DictConfig)
    if group == "model":
        assert cfg.model.kind in FAMILIES, f"model={option}: family={cfg.model.kind!r}, valid: {FAMILIES}"


def test_plugins_are_applied():
    """hparams_search=optuna picks transferlab's Optuna sweeper (src/hydra_plugins, found by Hydra's
    plugin scan) with every sampler and pruner; hydra/launcher=slurm needs hydra-submitit-launcher
    (extra `sweep`)."""
    cfg = _compose("train", ["hparams_search=optuna"])
    assert cfg.hydra.sweeper._target_ == "hydra_plugins.transferlab_optuna.sweeper.OptunaSweeper"
    assert cfg.hydra.mode == RunMode.MULTIRUN and "optimizer.lr" in cfg.hydra.sweeper.params
    for sampler in ("tpe", "random", "grid", "cmaes", "qmc", "gp", "nsgaii"):
        cfg = _compose("train", ["hparams_search=optuna", f"hydra/sweeper/sampler={sampler}"])
        assert cfg.hydra.sweeper.sampler._target_.startswith("optuna.samplers.")
    for pruner in ("median", "hyperband", "successive_halving"):
        cfg = _compose("train", ["hparams_search=optuna", f"hydra/sweeper/pruner={pruner}"])
        assert cfg.hydra.sweeper.pruner.kind == pruner and len(cfg.hydra.sweeper.pruner) > 1
    cfg = _compose("train", ["hydra/launcher=slurm"])
    assert "submitit" in cfg.hydra.launcher._target_.lower()
    assert cfg.hydra.launcher.timeout_min == 240


@pytest.mark.parametrize("base", [p for p in FILES if _is_base(p)], ids=_rel)
def test_every_base_is_inherited_and_composes_through_its_options(base):
    """A base file is covered by the options that name it in their defaults; each of them
    composes to at least the base's keys."""
    inheritors = [p for p in base.parent.glob("*.yaml") if not _is_base(p) and base.stem in _defaults(p)]
    assert inheritors, f"{_rel(base)} is named in no option's defaults list"
    group = base.parent.relative_to(CONF).as_posix()
    keys = set(OmegaConf.load(base))
    for option in inheritors:
        cfg = _compose("train", [f"{group}={option.stem}"])
        assert keys <= set(cfg[group]), f"{group}={option.stem} lacks {keys - set(cfg[group])} of {_rel(base)}"


def test_parametrization_covers_every_config_file():
    covered = {CONF / f"{root}.yaml" for root in ROOTS}
    covered |= {case.values[3] for case in OPTION_CASES}
    covered |= {p for p in FILES if _is_base(p)}  # checked by test_every_base_is_inherited_...
    assert covered == set(FILES), f"not covered: {sorted(map(_rel, set(FILES) - covered))}"
    assert len(FILES) > 50  # the glob found the tree


# --- every key is commented -------------------------------------------------------------------

# `key:` or `- key:` at the start of a line (plain or quoted key; a list of plain strings has none).
_KEY = re.compile(r"""^\s*(?:-\s+)?(?:'[^']*'|"[^"]*"|[^\s#'"\-{}\[\]][^#:]*?):(?:\s|$)""")
_BLOCK_SCALAR = re.compile(r":\s*[|>][-+0-9]*\s*(?:#.*)?$")


def _has_trailing_comment(line: str) -> bool:
    quote = None
    for i, ch in enumerate(line):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return True
    return False


def uncommented_keys(text: str) -> list[tuple[int, str]]:
    """(line number, line) of every key with neither a trailing `# ...` nor a comment line directly
    above it. Lines inside block scalars (`key: |`) are text, not keys."""
    lines, bad, block = text.splitlines(), [], None
    for n, line in enumerate(lines):
        indent = len(line) - len(line.lstrip())
        if block is not None:
            if not line.strip() or indent > block:
                continue
            block = None
        if line.lstrip().startswith("#") or not _KEY.match(line):
            continue
        above = lines[n - 1].lstrip() if n else ""
        if not _has_trailing_comment(line) and not above.startswith("#"):
            bad.append((n + 1, line.strip()))
        if _BLOCK_SCALAR.search(line):
            block = indent
    return bad


def test_comment_checker():
    text = ("# header\nname: x\nkind: y\nlr: 1  # ok\nurl: 'a#b'\nhead:\n  # a block\n  hidden: 0\n"
            "defaults:  # ok\n  - _self_\n  - override /data: digits\nnote: |\n  not: a key\n")
    assert uncommented_keys(text) == [(3, "kind: y"), (5, "url: 'a#b'"), (6, "head:"),
                                      (11, "- override /data: digits"), (12, "note: |")]


def test_every_key_is_commented():
    offenders = [f"{_rel(p)}.yaml:{n}: {line}" for p in FILES for n, line in uncommented_keys(p.read_text())]
    assert not offenders, "keys without a comment (a trailing `# ...` or a comment line above):\n" + \
        "\n".join(offenders)
