"""Run directories: one per run, never shared, never reused, never holding a secret.

Hydra names a run's directory by the second it started, so two runs started in the same second
shared one (metrics of one seed beside the checkpoint of the other). ``tl.run_dir`` claims the
directory by creating it: of two processes one wins, the other takes ``<time>-1``.

``RunDirectory`` (a Hydra callback, in ``conf/hydra/default.yaml``) acts before Hydra writes
anything into the directory: it refuses a directory that already holds a run (``hydra.run.dir=``
a finished run would replace its record and leave its checkpoints beside new ones), overrides on
``resume=`` (the resumed run keeps its own config, so they would silently not apply), and a
directory that cannot be created or written. Hydra's own record (``.hydra/``) is written here, with
secrets redacted; a resumed run keeps the record it started with. Imports stay light: this runs
before torch is loaded.
"""
from __future__ import annotations

import os
import re
import shlex
from pathlib import Path

from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from transferlab import redact
from transferlab.errors import ConfigError

_CLAIMED: dict[str, str] = {}  # timestamped name -> the directory this process created for it
# What `resume=` may be given besides: where outputs go and how the console looks, not what runs.
RESUME_MAY_CHANGE = ("resume", "paths.output_dir", "trainer.enable_progress_bar", "verbose")


def claim(path: str) -> str:
    """Create ``path`` (or ``path-1``, ``path-2``, ... when another run has it) and return it."""
    if path in _CLAIMED:  # Hydra resolves the run dir more than once
        return _CLAIMED[path]
    base, n = Path(path), 0
    while True:
        candidate = base if n == 0 else base.with_name(f"{base.name}-{n}")
        try:
            candidate.mkdir(parents=True)
            break
        except FileExistsError:
            n += 1
        except OSError:  # unwritable, name too long: RunDirectory.on_run_start says so in one line
            return str(candidate)
    _CLAIMED[path] = str(candidate)
    return str(candidate)


def _run_dir(resume, new: str) -> str:
    """``hydra.run.dir``: the directory of ``resume=`` when it is a run, else a new one of this run's own."""
    if resume and (Path(str(resume)) / "config.yaml").is_file():
        return str(resume)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # torchrun/srun: every rank must name the same folder
        return new
    return claim(new)


OmegaConf.register_new_resolver("tl.run_dir", _run_dir, replace=True, use_cache=True)


def resume_command(run_dir) -> str:
    """``tl-train resume=RUN_DIR`` as a line to paste into a shell: quoted for Hydra's override grammar
    (a path with spaces or parentheses) and then for the shell (a name with ``$(...)`` runs nothing)."""
    value = str(run_dir)
    if not re.fullmatch(r"[\w./+-]+", value):
        value = "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    return "tl-train " + shlex.quote(f"resume={value}")


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def check_unused(run_dir: Path) -> None:
    """A new run never writes into a directory holding another run, finished or not."""
    run_dir = Path(run_dir)
    try:
        finished = (run_dir / "metrics.json").is_file()
        started = (run_dir / "config.yaml").is_file() or (run_dir / "checkpoints").is_dir()
    except OSError:  # a name too long, a folder we may not read: check_writable says which
        return
    if finished:
        raise ConfigError(f"'{run_dir}' already holds a finished run (metrics.json); a new run never replaces it. "
                          f"Choose a new directory (hydra.run.dir=..., or leave it out for a fresh timestamped one)")
    if started:
        raise ConfigError(f"'{run_dir}' already holds an unfinished run; continue it with "
                          f"{resume_command(run_dir)}, or choose a new directory (hydra.run.dir=...)")


def check_writable(run_dir: Path) -> None:
    try:
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        probe = Path(run_dir) / f".write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise ConfigError(f"cannot write the run directory '{run_dir}': {e.strerror or e}; choose another with "
                          f"paths.output_dir=... or hydra.run.dir=... (and a shorter experiment_name if the name is "
                          f"too long)") from None


def is_rank_zero() -> bool:
    """Before the Trainer settles ranks: the process a user started, not one a DDP launcher started for it."""
    return os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")) == "0"


def _save_scrubbed(node, name: str, folder: Path) -> None:
    plain = OmegaConf.to_container(node, resolve=False) if OmegaConf.is_config(node) else node
    folder.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(OmegaConf.create(redact.scrub(plain)), folder / name)


class RunDirectory(Callback):
    """Guards a run's directory before Hydra writes into it, and writes Hydra's record without secrets."""

    def __init__(self, record: str = ".hydra"):
        self.record = record  # folder of Hydra's record inside each run directory

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        """Hydra turns a callback's exception into a warning and goes on; a refusal here exits instead."""
        from transferlab.cli import user_errors
        from transferlab.config import load_run_config

        with user_errors():
            if not is_rank_zero():  # Lightning's DDP ranks re-run the command into rank 0's directory
                return
            run_dir = Path(str(config.hydra.run.dir))
            resume = OmegaConf.select(config, "resume", default=None)
            if resume:
                load_run_config(resume)  # not a run, or a config that names code: say so first
                extra = [o for o in config.hydra.overrides.task if _key(o) not in RESUME_MAY_CHANGE]
                if extra:
                    them = "it" if len(extra) == 1 else "them"
                    raise ConfigError(f"resume={resume} continues the run with its own saved config, so "
                                      f"{' '.join(extra)} would not apply; resume without {them}, or start a "
                                      f"new run with {them}")
            else:
                check_unused(run_dir)  # before probing: a refused directory is left exactly as it was
            check_writable(run_dir)

    def on_job_start(self, config: DictConfig, **kwargs) -> None:
        redact.remember(list(config.hydra.overrides.task))  # before anything of this job is written
        if OmegaConf.select(config, "resume", default=None) or not is_rank_zero():
            return
        folder = Path(config.hydra.runtime.output_dir) / self.record
        task = {k: v for k, v in OmegaConf.to_container(config, resolve=False).items() if k != "hydra"}
        _save_scrubbed(task, "config.yaml", folder)
        _save_scrubbed({"hydra": OmegaConf.to_container(config.hydra, resolve=False)}, "hydra.yaml", folder)
        _save_scrubbed(config.hydra.overrides.task, "overrides.yaml", folder)
        if config.hydra.mode == RunMode.MULTIRUN:  # the launcher's copy of the sweep's command
            sweep_record = Path(config.hydra.sweep.dir) / "multirun.yaml"
            if sweep_record.is_file():
                text = sweep_record.read_text()
                if redact.scrub(text) != text:
                    _save_scrubbed(OmegaConf.load(sweep_record), "multirun.yaml", sweep_record.parent)
