"""One run directory: what a run writes there and how a new run may claim one.

Run directories are never shared and never reused. A new run claims its folder by creating it (of two
processes started in the same second one wins, the other takes ``<time>-1``), and a folder that holds
anything of a run, finished or not, is refused before anything is written into it.
"""
from __future__ import annotations

import json
import os
import re
import shlex
from pathlib import Path

from transferlab.errors import ConfigError
from transferlab.runs import files, saved

CONFIG, METRICS, FAILED, PRUNED, ENV = "config.yaml", "metrics.json", "failed.json", "pruned.json", "env.json"
CHECKPOINTS, BEST, LAST = "checkpoints", "best.ckpt", "last.ckpt"
CANDIDATES = "candidates.csv"  # a fusion's every candidate model and its scores
FUSED, FUSION_FIGURE = "fused.ckpt", "fusion.png"  # a fusion's weights (in checkpoints/) and its candidates' curve
ADAPTER = "adapter"  # a LoRA/(IA)³ run's adapter alone, in peft's format (best.ckpt holds it merged)
FEATURES = "features"  # backbone features of a run that keeps them with itself (no shared cache)
PREDICTIONS, SUMMARY = "predictions", "summary.json"  # tl-predict's rows (.csv/.jsonl/.parquet) and its counts and metrics
EXPORTED = "transferlab.json"  # an export's record: the run it came from and what its check measured
RECORD = ".hydra"  # Hydra's record of the command line (written by the run-directory guard)
LOGS = ("train.log", "eval.log", "fuse.log")  # <command>.log, opened by Hydra before anything else is written
# What marks a folder as (part of) a run: a new run never writes where any of these is.
MARKS = (CONFIG, METRICS, FAILED, PRUNED, ENV, CHECKPOINTS, RECORD, SUMMARY, *LOGS)


class RunDir:
    """The files of one run. Only this class spells their names."""

    def __init__(self, path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    @property
    def checkpoints(self) -> Path:
        return self.path / CHECKPOINTS

    @property
    def last(self) -> Path:
        return self.checkpoints / LAST

    def log(self, command: str) -> Path:
        """Where ``command`` (train, eval, fuse, ...) keeps every log record of the run."""
        return self.path / f"{command}.log"

    def file(self, name: str) -> Path:
        return self.path / name

    def confusion(self, split: str, task: str, suffix: str = ".csv", kind: str = "confusion") -> Path:
        """``confusion_<task>.csv`` of the test split, ``confusion_<task>.eval-<set>.csv`` of an evaluation
        set (``kind`` per_class: per-class precision, recall, F1 and support)."""
        tail = "" if split == "test" else "." + split.replace("/", "-")
        return self.path / f"{kind}_{task}{tail}{suffix}"

    # --- writing --------------------------------------------------------------------------------
    def write_config(self, config: dict) -> None:
        files.write_yaml(self.path / CONFIG, {saved.KEY: saved.VERSION, **{k: v for k, v in config.items()
                                                                           if k != saved.KEY}})

    def write_env(self, env: dict) -> None:
        """env.json; ``cwd``: the folder the command ran in, which relative paths it was given meant."""
        files.write_json(self.path / ENV, {**env, "cwd": env.get("cwd") or os.getcwd()})

    def write_metrics(self, metrics: dict) -> None:
        """Written last: its presence means the run finished."""
        files.write_json(self.path / METRICS, metrics)

    def write_confusion(self, split: str, task: str, classes: list[str], matrix: list[list[int]]) -> None:
        """Rows: the true class, columns: the predicted one, both by name."""
        files.write_csv(self.confusion(split, task), ["true \\ predicted", *classes],
                        [[c, *row] for c, row in zip(classes, matrix)])

    def write_per_class(self, split: str, task: str, columns: list[str], rows: list[list]) -> None:
        files.write_csv(self.confusion(split, task, kind="per_class"), columns, rows)

    def write_failed(self, error: BaseException, describe: dict) -> None:
        files.write_json(self.path / FAILED, {"error": f"{type(error).__name__}: {error}", **describe})

    def write_pruned(self, record: dict) -> None:
        files.write_json(self.path / PRUNED, record)

    # --- reading --------------------------------------------------------------------------------
    def has(self, name: str) -> bool:
        return (self.path / name).exists()

    def finished(self) -> bool:
        return (self.path / METRICS).is_file()

    def read_config(self) -> dict:
        """The run's config.yaml, checked and upgraded to this version."""
        if not (self.path / CONFIG).is_file():
            raise ConfigError(f"'{self.path}' is not a transferlab run directory: it has no {CONFIG}")
        return saved.read_config(self.path / CONFIG)

    def read_json(self, name: str) -> dict:
        """metrics.json, failed.json, ...: a JSON object, or a ConfigError saying the file is damaged."""
        path = self.path / name
        try:
            value = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, ValueError) as e:
            raise ConfigError(f"'{path}' is not readable JSON ({str(e).splitlines()[0]}); the run directory "
                              f"is damaged") from None
        if not isinstance(value, dict):
            raise ConfigError(f"'{path}' holds a JSON {type(value).__name__}, not an object; the run directory "
                              f"is damaged")
        return value

    def started_in(self) -> str | None:
        """The folder the run's command ran in (env.json's ``cwd``), or None where it is not recorded."""
        try:
            cwd = self.read_json(ENV).get("cwd") if self.has(ENV) else None
        except ConfigError:
            return None
        return cwd if isinstance(cwd, str) and os.path.isabs(cwd) else None

    def located_config(self, command: str, optional: tuple[str, ...] = ()) -> dict:
        """config.yaml to run again (``command``: tl-reproduce, tl-train resume=...): a training run's,
        complete (``saved.require_complete``), its relative paths made absolute against the folder it was
        started in (``saved.locate_paths``). A path that cannot be found is an error naming it, unless its
        key is in ``optional`` (then it stays as saved)."""
        config = self.read_config()
        if "fusion" in config or "strategy" not in config:
            raise ConfigError(f"'{self.path}' is not a training run (its {CONFIG} has no strategy); {command} "
                              f"takes a tl-train run")
        saved.require_complete(config, f"'{self.path / CONFIG}'")
        for name, value in saved.locate_paths(config, self.started_in()):
            if name not in optional:
                raise saved.lost_path_error(f"'{self.path / CONFIG}'", name, value, command)
        return config

    def tested_checkpoint(self, metrics: dict) -> Path:
        """The checkpoint the run reported its test metrics with (``best_checkpoint``), found in this
        folder wherever the run was trained (a moved or copied run uses its own files). A run whose
        checkpoint is gone is an error: another file would be another model than the one reported."""
        recorded = metrics.get("best_checkpoint")
        path = self.checkpoints / (Path(recorded).name if recorded else LAST)
        if not path.is_file():
            raise ConfigError(f"run '{self.path}' reported its test metrics with {path.name}, and {path} is gone; "
                              f"another checkpoint would be another model than the one the run reported")
        return path

    # --- claiming -------------------------------------------------------------------------------
    def marks(self) -> list[str]:
        try:
            return [name for name in MARKS if (self.path / name).exists()]
        except OSError:  # a name too long, a folder we may not read: check_writable says which
            return []

    def refuse_if_used(self) -> None:
        """A new run never writes into a folder holding a run, finished or not."""
        marks = self.marks()
        if not marks:
            return
        if METRICS in marks:
            raise ConfigError(f"'{self.path}' already holds a finished run ({METRICS}); a new run never replaces "
                              f"it. Choose a new directory (hydra.run.dir=..., hydra.sweep.dir=..., or leave it out "
                              f"for a fresh timestamped one)")
        if self.last.is_file() and self.has(CONFIG) and not (self.has(FAILED) or self.has(PRUNED)):
            raise ConfigError(f"'{self.path}' already holds an unfinished run; continue it with "
                              f"{resume_command(self.path)}, or choose a new directory (hydra.run.dir=...)")
        raise ConfigError(f"'{self.path}' already holds files of another run ({', '.join(marks)}); a new run never "
                          f"writes among them. Choose a new directory (hydra.run.dir=..., hydra.sweep.dir=...)")

    def check_writable(self) -> None:
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            probe = self.path / f".write-test-{os.getpid()}"
            probe.write_text("")
            probe.unlink()
        except OSError as e:
            raise ConfigError(f"cannot write the run directory '{self.path}': {e.strerror or e}; choose another "
                              f"with paths.output_dir=... or hydra.run.dir=... (and a shorter experiment_name if the "
                              f"name is too long)") from None


def resume_command(run_dir) -> str:
    """``tl-train resume=RUN_DIR`` as a line to paste into a shell: quoted for Hydra's override grammar
    (a path with spaces or parentheses) and then for the shell (a name with ``$(...)`` runs nothing)."""
    value = str(run_dir)
    if not re.fullmatch(r"[\w./+-]+", value):
        value = "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    return "tl-train " + shlex.quote(f"resume={value}")


_CLAIMED: dict[str, str] = {}  # a new run's timestamped name -> the folder this process created for it
_BASE: dict[str, str] = {}  # a folder name free_name gave -> the timestamped name it stands for


def free_name(path: str) -> str:
    """The folder a new run at ``path`` will have: ``path``, or ``path-1``, ``path-2``, ... when taken
    (by this process's claim, or by a folder that exists). Creates nothing."""
    if path in _CLAIMED:
        return _CLAIMED[path]
    candidate = _first(Path(path), lambda p: not p.exists())
    _BASE[candidate] = path
    return candidate


def claim(path) -> str:
    """Make ``path`` the folder of a new run and return it. A name ``free_name`` gave (a timestamped
    one) is claimed by creating it, so of two processes in the same second each gets a folder of its
    own (``<time>-1``); any other folder is refused when it holds (part of) another run. A folder this
    process claimed already (Hydra's, with its log in it) is its own."""
    path = str(path)
    refuse_interpolation(path)
    base = _BASE.get(path)
    if base is not None:
        if base not in _CLAIMED:
            _CLAIMED[base] = _first(Path(base), _created)
        path = _CLAIMED[base]
    elif _key(path) not in _TAKEN or RunDir(path).finished():  # a run this process finished is not its own
        if _shared_by_ranks():  # the other ranks' Hydra opens its log in the folder too
            adopt(path)
        else:
            RunDir(path).refuse_if_used()
    RunDir(path).check_writable()
    _TAKEN.add(_key(path))
    return path


def refuse_interpolation(path: str) -> None:
    """A folder name holding ``${`` is refused before anything is created: Hydra reads the run directory
    as a config value again (its log file's name), where ``${...}`` is an interpolation, and fails."""
    if "${" in str(path):
        raise ConfigError(f"the output folder '{path}' contains '${{', which Hydra would read as an "
                          f"interpolation (it names the run's log file after the folder); choose a folder name "
                          f"without '${{' (hydra.run.dir=..., hydra.sweep.dir=..., paths.output_dir=..., "
                          f"experiment_name=...)")


def _key(path) -> str:
    try:
        return str(Path(path).resolve())
    except OSError:
        return str(path)


def forget_claims() -> None:
    """A new run in this process (the API, a test) names and claims a folder of its own."""
    _CLAIMED.clear()
    _BASE.clear()
    _TAKEN.clear()


_TAKEN: set[str] = set()  # run directories this process claimed for the run it is doing


def adopt(path) -> None:
    """``path`` is this process's run directory: a sweep job's folder, whose sweep was checked as a whole
    before it started. Refused when it holds a run all the same (Hydra's log aside)."""
    marks = [m for m in RunDir(path).marks() if m not in (*LOGS, RECORD)]
    if marks:
        RunDir(path).refuse_if_used()
    _TAKEN.add(_key(path))


def _created(path: Path) -> bool:
    try:
        path.mkdir(parents=True)
        return True
    except FileExistsError:
        return False
    except OSError:  # unwritable, name too long: check_writable says so in one line
        return True


def _first(base: Path, ok) -> str:
    n = 0
    while True:
        candidate = base if n == 0 else base.with_name(f"{base.name}-{n}")
        try:
            if ok(candidate):
                return str(candidate)
        except OSError:
            return str(candidate)
        n += 1


def _shared_by_ranks() -> bool:
    """Whether other processes run this command line into the same folder: ranks that torchrun or srun
    started (``WORLD_SIZE``), or Lightning's own launcher started on each of several nodes (``NODE_RANK``)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 or "NODE_RANK" in os.environ


def _run_dir(resume, new: str) -> str:
    """``hydra.run.dir``: the directory of ``resume=`` when it is a run, else a new one of this run's own."""
    if resume and (Path(str(resume)) / CONFIG).is_file():
        return str(resume)
    if _shared_by_ranks():  # every rank must name the same folder
        return new
    return free_name(new)


def register_resolvers() -> None:
    """``${tl.run_dir:RESUME,NEW}`` in conf/hydra/default.yaml: pure (it names the folder; the guard
    claims it), so resolving a config never creates anything."""
    from omegaconf import OmegaConf

    OmegaConf.register_new_resolver("tl.run_dir", _run_dir, replace=True, use_cache=False)
