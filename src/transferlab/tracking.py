"""What a run records besides checkpoints: its loggers (the ``logger`` group) and ``env.json``.

Each ``logger.<entry>`` names its implementation by ``kind`` (``LOGGERS``: csv, wandb, tensorboard)
and takes that logger's settings. W&B runs offline unless the user chose a mode, never records a
secret, and every logger's run ends with the job (``finish``), so each job of a sweep is a run of
its own. Lightning and torch are imported only when loggers are created.
"""
from __future__ import annotations

import functools
import logging
import os
import platform
import subprocess
import sys
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from transferlab.redact import argv_scrubbed, scrub
from transferlab.registry import Registry
from transferlab.settings import Settings, setting

log = logging.getLogger(__name__)

LOGGERS = Registry("logger.<entry>", "logger", modules=("transferlab.tracking",))
PACKAGES = ("torch", "torchvision", "timm", "pytorch-lightning", "hydra-core", "omegaconf", "wandb",
            "torchmetrics", "numpy", "scikit-learn", "transformers", "tokenizers", "transferlab")


@LOGGERS.register("csv")
@dataclass(kw_only=True)
class Csv(Settings):
    """Metrics as CSV in <run_dir>/<name>/metrics.csv (what tl-report draws learning curves from)."""
    kind: str = "csv"
    name: str = "csv"
    version: str = ""
    prefix: str = ""
    flush_logs_every_n_steps: int = 100

    def create(self, run_dir: Path):
        return _continued_csv_logger()(save_dir=str(run_dir), name=self.name, version=self.version,
                                       prefix=self.prefix, flush_logs_every_n_steps=self.flush_logs_every_n_steps)


@LOGGERS.register("wandb")
@dataclass(kw_only=True)
class Wandb(Settings):
    """Weights & Biases, offline unless WANDB_MODE says otherwise."""
    kind: str = "wandb"
    project: str = "transferlab"
    entity: str | None = None
    group: str | None = None
    job_type: str | None = None
    name: str | None = None
    tags: list[str] = setting(factory=list)
    notes: str | None = None
    log_model: bool = False
    offline: bool = False

    def create(self, run_dir: Path):
        from pytorch_lightning.loggers import WandbLogger

        extra = {k: v for k, v in (("entity", self.entity), ("notes", self.notes)) if v is not None}
        previous = sorted(p for p in (Path(run_dir) / "wandb").glob("*run-*-*") if p.is_dir())
        if previous:  # a resumed run continues its W&B run (``wandb sync`` joins the parts under one id)
            extra.update(id=previous[-1].name.rsplit("-", 1)[1], resume="allow")
        logger = WandbLogger(save_dir=str(run_dir), project=self.project, group=self.group, job_type=self.job_type,
                             name=self.name, tags=list(self.tags), log_model=self.log_model, offline=self.offline,
                             **extra)
        # Lightning always passes anonymous=None, and wandb warns on every run that the setting does nothing
        getattr(logger, "_wandb_init", {}).pop("anonymous", None)
        return logger


@LOGGERS.register("tensorboard")
@dataclass(kw_only=True)
class Tensorboard(Settings):
    """TensorBoard event files in <run_dir>/<name>."""
    kind: str = "tensorboard"
    name: str = "tensorboard"
    version: str = ""
    default_hp_metric: bool = False
    log_graph: bool = False

    def create(self, run_dir: Path):
        from pytorch_lightning.loggers import TensorBoardLogger

        return TensorBoardLogger(save_dir=str(run_dir), name=self.name, version=self.version,
                                 default_hp_metric=self.default_hp_metric, log_graph=self.log_graph)


@functools.cache
def _continued_csv_logger():
    """Lightning's CSVLogger, except that it continues an existing metrics.csv: its writer deletes the file
    when it starts, which would erase the epochs a resumed run logged before it was interrupted."""
    import csv

    from pytorch_lightning.loggers import CSVLogger

    class ContinuedCSVLogger(CSVLogger):
        @property
        def experiment(self):
            if self._experiment is not None:
                return self._experiment
            path = Path(self.log_dir) / "metrics.csv"
            kept = path.read_bytes() if path.is_file() else None
            experiment = CSVLogger.experiment.fget(self)
            if kept is not None and hasattr(experiment, "metrics_keys"):  # rank 0's writer, not a dummy
                path.write_bytes(kept)
                with open(path, newline="") as f:
                    experiment.metrics_keys = sorted(next(csv.reader(f), []))  # new keys rewrite the header
            return experiment

    return ContinuedCSVLogger


def parse_loggers(logger_cfg) -> dict[str, Settings]:
    """``logger``: entry name -> its settings (null entries dropped)."""
    return {name: LOGGERS.parse(spec, f"logger.{name}") for name, spec in (logger_cfg or {}).items()
            if spec is not None}


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
    import torch

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


def create_loggers(loggers: dict[str, Settings], run_dir: Path) -> list:
    """Every logger of the ``logger`` group (parsed settings); W&B runs offline unless the user chose a mode."""
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("WANDB_SILENT", "true")
    created = []
    for settings in loggers.values():
        logger = settings.create(Path(run_dir))
        if settings.kind == "wandb":
            logger = _wandb_or_offline(logger, settings, run_dir)
        created.append(logger)
    return created


def _wandb_or_offline(logger, settings, run_dir):
    """Start the W&B run now; if the server cannot be reached, warn and keep the run offline."""
    from dataclasses import replace

    from pytorch_lightning.utilities import rank_zero_only

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
        logger = replace(settings, offline=True).create(Path(run_dir))
        with argv_scrubbed():
            logger.experiment  # noqa: B018
        return logger


def log_config(loggers, config: dict) -> None:
    for logger in loggers:
        logger.log_hyperparams(scrub(config))


def _wandb(loggers) -> list:
    return [lg for lg in loggers if type(lg).__name__ == "WandbLogger"]


def log_table(loggers, key: str, columns: list[str], rows: list[list]) -> None:
    """A table once (W&B; the CSV log keeps scalars, the run directory has the file)."""
    for logger in _wandb(loggers):
        logger.log_table(key, columns=columns, data=rows)


def log_image(loggers, key: str, path: Path) -> None:
    """A figure once (W&B), not one per epoch."""
    for logger in _wandb(loggers):
        logger.log_image(key, [str(path)])


def summarize(loggers, values: dict) -> None:
    """The W&B run's summary: what a run that logs no final step (a fusion, a ranking) is remembered by."""
    plain = {k: v for k, v in values.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    for logger in _wandb(loggers):
        logger.experiment.summary.update(plain)


def finish(loggers, status: str = "success") -> None:
    """End each logger's run, failed ones too, so every job of a multirun is its own W&B run."""
    from pytorch_lightning.utilities import rank_zero_only

    for logger in loggers:
        logger.finalize(status)
        if type(logger).__name__ == "WandbLogger" and rank_zero_only.rank == 0:
            import wandb

            if wandb.run is not None:
                wandb.finish(exit_code=0 if status == "success" else 1)
