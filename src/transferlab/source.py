"""Source runs: train the source model first, as an ordinary transferlab run, and cache it.

``source.overrides`` are the ``tl-train`` overrides of the source task (e.g. digits 0-4). The source
run uses this run's ``model`` node, so architectures always match, and is cached under
``source.cache_dir`` by a hash of its resolved config: the first run trains it, later ones reuse it.
Weights the user gives (``model.checkpoint`` or ``model.pretrained``) always win over a source run.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import shutil
import zipfile
from pathlib import Path

from omegaconf import OmegaConf
from pytorch_lightning.utilities import rank_zero_only

from transferlab import console
from transferlab.choices import FAMILIES
from transferlab.config import compose_config, set_value, to_plain

log = logging.getLogger(__name__)


def source_config(cfg):
    src = compose_config(list(cfg.source.overrides))
    set_value(src, "model", OmegaConf.merge(cfg.model, {"checkpoint": None, "pretrained": False}))
    set_value(src, "paths.run_dir", "")  # not part of the key; Hydra's output dir is not the source's
    key = {k: v for k, v in to_plain(src).items() if k not in ("paths", "logger", "hydra")}
    inputs = FAMILIES.create(cfg.model.family, cfg.model).fingerprint()
    if inputs:  # (no entry for families without one: their existing cached sources keep their keys)
        key["model_inputs"] = inputs
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:12]
    run_dir = Path(cfg.source.cache_dir).expanduser() / f"{cfg.model.name}-{digest}"
    set_value(src, "paths.run_dir", str(run_dir))
    # Shown like the run that needs it (no bars in a sweep); not part of the key: the weights do not change.
    set_value(src, "trainer.enable_progress_bar", cfg.trainer.get("enable_progress_bar", True))
    return src, run_dir


def _as_rank_zero(fn, *args):
    """The source run is a single-process run even when this process is rank 1 of a larger job."""
    rank = rank_zero_only.rank
    rank_zero_only.rank = 0
    try:
        return fn(*args)
    finally:
        rank_zero_only.rank = rank


def prepare_source(cfg, train_fn) -> str | None:
    """The checkpoint to start from: the cached source run's best, trained now if it is missing."""
    if not cfg.get("source") or not cfg.source.get("overrides"):
        return None
    if cfg.model.get("checkpoint") or cfg.model.get("pretrained") or cfg.model.get("path"):
        log.info("source run skipped: weights come from %s", cfg.model.get("checkpoint") or cfg.model.get("path")
                 or "the hub (pretrained=true)")
        return None
    src, run_dir = source_config(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / ".lock", "w") as lock:  # concurrent jobs wait for one source run
        fcntl.flock(lock, fcntl.LOCK_EX)
        checkpoint = _cached_checkpoint(run_dir)
        if checkpoint is None:
            console.show("training the source model (%s) into %s; later runs reuse it",
                         " ".join(cfg.source.overrides), run_dir)
            _as_rank_zero(train_fn, src)
            checkpoint = _cached_checkpoint(run_dir)
        else:
            log.info("reusing the cached source model in %s", run_dir)
    return checkpoint


def _cached_checkpoint(run_dir: Path) -> str | None:
    """The finished source run's checkpoint; None (and the folder emptied, it is a cache) when the run
    was interrupted or its files are damaged, so it is trained again instead of failing every run."""
    try:
        best = json.loads((run_dir / "metrics.json").read_text()).get("best_checkpoint")
        path = run_dir / "checkpoints" / (Path(best).name if best else "last.ckpt")
        if zipfile.is_zipfile(path):  # torch checkpoints are zip archives: a truncated one is not
            return str(path)
        problem = f"its checkpoint {path} is damaged"
    except FileNotFoundError:
        problem = None if not any(p.name != ".lock" for p in run_dir.iterdir()) else "it never finished"
    except (OSError, ValueError, AttributeError) as e:
        problem = f"its metrics.json is unreadable ({e})"
    if problem:
        log.warning("the cached source run in %s is unusable (%s); training it again", run_dir, problem)
    for path in run_dir.iterdir():
        if path.name != ".lock":
            shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
    return None
