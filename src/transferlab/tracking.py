"""What a run leaves behind besides checkpoints: loggers, ``env.json``, ``metrics.json``.

Files are written to a temporary name and renamed, so a crash never leaves half a file where a
good one was, and ``metrics.json`` (written last) means the run finished. Nothing that looks like a
secret (a variable or key named *KEY*, *TOKEN*, *SECRET*, or its value) is ever written.
"""
from __future__ import annotations

import json
import logging
import math
import os
import platform
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path

import torch
import yaml
from pytorch_lightning.utilities import rank_zero_only

from transferlab.choices import LOGGERS
from transferlab.redact import REDACTED, SECRET_NAME, argv_scrubbed, scrub  # noqa: F401 - re-exported

log = logging.getLogger(__name__)

PACKAGES = ("torch", "torchvision", "timm", "pytorch-lightning", "hydra-core", "omegaconf", "wandb",
            "torchmetrics", "numpy", "scikit-learn", "transferlab")



def write_atomic(path: Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's 0600 would hide the run from the user's group
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def strict_json(obj):
    """JSON has no NaN or infinity (Python writes them, most readers refuse them): null instead."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: strict_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict_json(v) for v in obj]
    return obj


def write_json(path: Path, obj) -> None:
    write_atomic(path, json.dumps(strict_json(scrub(obj)), indent=2, sort_keys=True, default=str,
                                  allow_nan=False) + "\n")


def write_yaml(path: Path, obj) -> None:
    write_atomic(path, yaml.safe_dump(scrub(obj), sort_keys=False))


def git_state(path: Path) -> dict:
    """Commit and dirty flag of the repository holding the code (null outside a checkout)."""
    def git(*args):
        return subprocess.run(["git", *args], cwd=path, capture_output=True, text=True, timeout=10)
    try:
        head = git("rev-parse", "HEAD")
        if head.returncode != 0:
            return {"commit": None, "dirty": None}
        return {"commit": head.stdout.strip(), "dirty": bool(git("status", "--porcelain", "--untracked-files=no").stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def environment() -> dict:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    cuda = torch.cuda.is_available()
    return {
        "git": git_state(Path(__file__).resolve().parent),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "packages": versions,
        "device": {"cuda": cuda, "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
                   "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                   "torch_cuda": torch.version.cuda},
        "argv": sys.argv,
    }


def create_loggers(logger_cfg, run_dir: Path) -> list:
    """Instantiate every logger of the ``logger`` group; W&B runs offline unless the user chose a mode."""
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("WANDB_SILENT", "true")
    loggers = []
    for spec in (logger_cfg or {}).values():
        if spec is None:
            continue
        kind, settings = spec["kind"], {k: v for k, v in dict(spec).items() if k != "kind"}
        logger = LOGGERS.create(kind, save_dir=str(run_dir), **settings)
        if kind == "wandb":
            logger = _wandb_or_offline(logger, settings, run_dir)
        loggers.append(logger)
    return loggers


def _wandb_or_offline(logger, settings, run_dir):
    """Start the W&B run now; if the server cannot be reached, warn and keep the run offline."""
    if not rank_zero_only.rank == 0:
        return logger
    try:
        with argv_scrubbed():  # W&B records the command line in the run's metadata
            logger.experiment  # noqa: B018 - creating the run is the point
        return logger
    except Exception as e:  # noqa: BLE001 - wandb raises many kinds when the network is down
        log.warning("W&B could not start in mode %s (%s); logging offline to %s/wandb instead; "
                    "upload later with `wandb sync`", os.environ.get("WANDB_MODE"), str(e).splitlines()[0], run_dir)
        import wandb

        os.environ["WANDB_MODE"] = "offline"
        wandb.teardown()  # wandb keeps the failed mode in its process-wide settings otherwise
        logger = LOGGERS.create("wandb", save_dir=str(run_dir), **dict(settings, offline=True))
        with argv_scrubbed():
            logger.experiment  # noqa: B018
        return logger


def log_config(loggers, config: dict) -> None:
    for logger in loggers:
        logger.log_hyperparams(scrub(config))


def finish(loggers, status: str = "success") -> None:
    """End each logger's run, failed ones too, so every job of a multirun is its own W&B run."""
    for logger in loggers:
        logger.finalize(status)
        if type(logger).__name__ == "WandbLogger" and rank_zero_only.rank == 0:
            import wandb

            if wandb.run is not None:
                wandb.finish(exit_code=0 if status == "success" else 1)
