"""Source runs (the ``source`` group): train the source model first, as an ordinary run, and cache it.

``source.overrides`` are the ``tl-train`` overrides of the source task (e.g. digits 0-4). The source
run uses this run's ``model`` node, so architectures always match, and is cached under
``source.cache_dir`` by a hash of its resolved config (and of what decides the model's inputs, e.g. a
tokenizer) without the cache folders in it, so a moved or shared cache still hits: the first run
trains it, later ones reuse it (a finished one is only read, so a read-only cache serves it).
Resolving a plan only names the cached run (``SourceRun``); ``run.prepare`` trains it when it is
missing. Weights the user gives (``model.checkpoint``, ``model.pretrained``, ``model.path``) always
win over a source run.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path

from transferlab import console
from transferlab.errors import ConfigError, unwritable_cache
from transferlab.runs import BEST, CHECKPOINTS, METRICS, RunDir

log = logging.getLogger(__name__)
KEY_EXCLUDES = ("paths", "logger", "hydra", "config_version")  # where a run goes and logs, not what it learns
# Folders of caches inside the config: where things are kept, not what they are (a tokenizer trained
# there is in the key by its settings hash, ``inputs_key``).
CACHE_LOCATIONS = (("source", "cache_dir"), ("model", "tokenizer", "cache_dir"))


def _drop(tree: dict, location: tuple) -> None:
    *parents, last = location
    for name in parents:
        tree = tree.get(name) if isinstance(tree, dict) else None
    if isinstance(tree, dict):
        tree.pop(last, None)


def source_config(cfg, inputs_key: str = ""):
    """The source run's config and its cache folder (``cfg``: this run's resolved config)."""
    from omegaconf import OmegaConf

    from transferlab.config import compose_config, set_value, to_plain

    src = compose_config(list(cfg.source.overrides))
    set_value(src, "model", OmegaConf.merge(cfg.model, {"checkpoint": None, "pretrained": False}))
    set_value(src, "paths.run_dir", "")  # not part of the key; Hydra's output dir is not the source's
    key = {k: v for k, v in to_plain(src).items() if k not in KEY_EXCLUDES}
    if key.get("regularizer") == {"kind": "none"}:  # as before the group existed: caches made then still hit
        del key["regularizer"]
    for location in CACHE_LOCATIONS:  # where caches live, not what is trained: a moved cache still hits
        _drop(key, location)
    if inputs_key:
        key["model_inputs"] = inputs_key
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:12]
    run_dir = Path(cfg.source.cache_dir).expanduser() / f"{cfg.model.name}-{digest}"
    set_value(src, "paths.run_dir", str(run_dir))
    # Shown like the run that needs it (no bars in a sweep); not part of the key: the weights do not change.
    set_value(src, "trainer.enable_progress_bar", cfg.trainer.get("enable_progress_bar", True))
    return src, run_dir


def own_weights(model) -> bool:
    """Whether a model (its config node or typed settings) names weights of its own: a checkpoint, hub
    weights or a local model folder."""
    return bool(model.get("checkpoint") or model.get("pretrained") or model.get("path"))


def wanted(cfg) -> bool:
    """A source run is trained when the source group has overrides and the model no weights of its own."""
    if not cfg.get("source") or not cfg.source.get("overrides"):
        return False
    return not own_weights(cfg.model)


@dataclass(frozen=True)
class SourceRun:
    """A step of ``run.prepare``: the source run, trained (by its own ``plan``) unless a finished one is
    cached; ``checkpoint`` is what this run's ``model.checkpoint`` names."""
    plan: object  # plan.Plan of the source run
    overrides: tuple

    @property
    def folder(self) -> Path:
        return Path(self.plan.run_dir)

    @property
    def checkpoint(self) -> Path:
        return self.folder / CHECKPOINTS / BEST

    def __repr__(self) -> str:
        return f"SourceRun({str(self.folder)!r})"

    def __str__(self) -> str:
        return f"train the source model ({' '.join(self.overrides)}) into {self.folder}"

    def done(self) -> bool:
        return _problem(self.folder) is None

    def perform(self, train) -> None:
        """``train(plan)``: the one run path (``run.train``), passed in so this lower floor never calls up."""
        folder = self.folder
        if _problem(folder) is None:  # finished meanwhile (or cached): reading needs no write access
            log.info("reusing the cached source model in %s", folder)
            return
        try:
            folder.mkdir(parents=True, exist_ok=True)
            lock = open(folder / ".lock", "w")  # noqa: SIM115 - closed by the `with` below
        except OSError as e:
            raise ConfigError(unwritable_cache(
                folder, e, "source model's", "source.cache_dir",
                "give the model weights of its own (model.checkpoint=... or model.pretrained=true) or source=none"
            )) from None
        with lock:  # concurrent jobs wait for one source run
            fcntl.flock(lock, fcntl.LOCK_EX)
            problem = _problem(folder)
            if problem is None:
                log.info("reusing the cached source model in %s", folder)
                return
            if problem != "empty":
                log.warning("the cached source run in %s is unusable (%s); training it again", folder, problem)
            for path in folder.iterdir():  # a cache: an interrupted or damaged run is trained again
                if path.name != ".lock":
                    shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
            console.show("training the source model (%s) into %s; later runs reuse it", " ".join(self.overrides),
                         folder)
            _as_rank_zero(train, self.plan)


def _problem(folder: Path) -> str | None:
    """Why the cached source run cannot be used ("empty" when nothing is there), or None."""
    if not folder.is_dir() or not any(p.name != ".lock" for p in folder.iterdir()):
        return "empty"
    run = RunDir(folder)
    if not run.finished():
        return "it never finished"
    try:
        run.read_json(METRICS)
    except Exception as e:  # noqa: BLE001 - a damaged metrics.json: train again
        return f"its {METRICS} is unreadable ({e})"
    best = run.checkpoints / BEST
    if not zipfile.is_zipfile(best):  # torch checkpoints are zip archives: a truncated one is not
        return f"its checkpoint {best} is damaged"
    return None


def _as_rank_zero(fn, *args):
    """The source run is a single-process run even when this process is rank 1 of a larger job."""
    from pytorch_lightning.utilities import rank_zero_only

    rank = rank_zero_only.rank
    rank_zero_only.rank = 0
    try:
        return fn(*args)
    finally:
        rank_zero_only.rank = rank
