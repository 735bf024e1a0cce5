"""The one place test files share code from: the settings, run helpers and made-up runs that more than one
test module uses. Test modules import them from here (``from helpers import ...``), never from one another;
conftest.py keeps only the test environment and pytest's fixtures.

Importing this module stays cheap: torch, Lightning and transformers are imported inside the functions that
use them (``StageWatcher``, a Lightning callback, is defined when it is first imported).
"""
from __future__ import annotations

import csv
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import yaml
from omegaconf import OmegaConf

from transferlab.plan import resolve

if TYPE_CHECKING:
    import torch

# --- config and in-process runs: compose a config the way tl-train does, train it in this process -----------

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

# Fast settings for the default digits transfer: fewer epochs, quiet, CSV only, a quicker source run.
FAST_SOURCE = ("source.overrides=['data=digits','data.classes=[0,1,2,3,4]','source=none','strategy=finetune','logger=csv',"
        "'trainer.max_epochs=4','trainer.enable_progress_bar=false']")
FAST = ["trainer.max_epochs=3", "trainer.enable_progress_bar=false", "logger=csv", FAST_SOURCE,
        "data.train_per_class=10"]  # 2 steps per epoch: the tests' expectations are written for 10 shots


# One intra-op thread: on 2 busy cores tiny runs are many times faster, and both runs of a comparison
# must use the same thread count (float sums may differ between counts).
ONE_THREAD = {"OMP_NUM_THREADS": "1"}  # for subprocesses


@contextmanager
def torch_threads(n: int):
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def compose(*overrides, run_dir: Path | None = None):
    from transferlab.config import compose_config, set_value

    if "source=none" in overrides:  # FAST's quicker source run would otherwise bring the source run back
        overrides = [o for o in overrides if o != FAST_SOURCE]
    cfg = compose_config(list(overrides))
    if run_dir is not None:
        set_value(cfg, "paths.run_dir", str(run_dir))
    return cfg


def train(run_dir: Path, *overrides, fast: bool = True) -> dict:
    """Run ``tl-train overrides`` in this process (same code path) and return metrics.json."""
    from transferlab import run

    cfg = compose(*(FAST if fast else []), *overrides, run_dir=run_dir)
    run.train(resolve(cfg))
    return json.loads((run_dir / "metrics.json").read_text())


def runs_into(root: Path, *base):
    """``train(name, *overrides)``: a finished run ``root/name`` made through the Python API with ``base``
    overrides first; returns its directory (module fixtures build their sets of runs with it)."""
    import transferlab

    return lambda name, *overrides: transferlab.train(*base, *overrides, run_dir=root / name).run_dir


# --- what training did to the parameters: backbone stages, checkpoints --------------------------------------

def _stage_watcher_class():
    from pytorch_lightning import Callback

    class StageWatcher(Callback):
        """Records, per epoch, which backbone stages had any parameter change."""

        def __init__(self):
            self.changed: list[set[int]] = []

        def on_train_epoch_start(self, trainer, pl_module):
            self._before = {n: p.detach().clone() for n, p in pl_module.model.backbone.named_parameters()}

        def on_train_epoch_end(self, trainer, pl_module):
            import torch

            model = pl_module.model
            self.changed.append({model.stage_of[n] for n, p in model.backbone.named_parameters()
                                 if not torch.equal(p.detach(), self._before[n])})

    StageWatcher.__qualname__ = "StageWatcher"  # as if defined at the top level (Lightning's state_key)
    return StageWatcher


def _interrupt_class():
    from pytorch_lightning import Callback

    class Interrupt(Callback):
        """Stops the run with an exception at the start of its second epoch (last.ckpt holds the first)."""

        def on_train_epoch_start(self, trainer, pl_module):
            if trainer.current_epoch == 1:
                raise RuntimeError("interrupted by the test")

    Interrupt.__qualname__ = "Interrupt"
    return Interrupt


_CALLBACKS = {"StageWatcher": _stage_watcher_class, "Interrupt": _interrupt_class}


def __getattr__(name: str):
    """``StageWatcher`` and ``Interrupt`` subclass Lightning's Callback: each is defined when first imported, so
    that importing this module does not import Lightning."""
    if name in _CALLBACKS:
        globals()[name] = cls = _CALLBACKS[name]()
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def backbone_state(ckpt_path) -> dict[str, torch.Tensor]:
    from transferlab.models.checkpoint import read_checkpoint

    state = read_checkpoint(ckpt_path)["state_dict"]
    return {k[len("model.backbone."):]: v for k, v in state.items() if k.startswith("model.backbone.")}


def source_checkpoint(run_dir):
    return OmegaConf.load(run_dir / "config.yaml").model.checkpoint


# --- console scripts: through their main() in this process, or in a process of their own -------------------

SCRIPTS = {"tl-train": "train", "tl-eval": "eval", "tl-fuse": "fuse", "tl-report": "report",
           "tl-reproduce": "reproduce", "tl-rank": "rank", "tl-predict": "predict",
           "tl-export": "export"}  # pyproject.toml's [project.scripts]: transferlab.cli.<module>:main


_CLI = threading.Lock()  # held by a running cli() call
_OUTSIDE: dict | None = None  # the environment outside the running cli() call, for process() to inherit


def cli(command: str, *args, cwd: Path, env: dict | None = None,
        timeout: int | None = None) -> subprocess.CompletedProcess:
    """``command args`` through its console script's ``main()`` in this process, as ``process`` runs it in a
    new one: the same argv, working folder and environment (``OMP_NUM_THREADS`` becomes torch's thread
    count), stdout and stderr captured, the exit status from ``SystemExit`` (an uncaught exception prints its
    traceback and exits 1, as Python does). It spares each call the 6-15 s of imports a new process pays;
    what only a process shows (signals, DDP ranks, concurrent processes, the interpreter's start-up) goes
    through ``process``. ``timeout`` is ``process``'s; a call here cannot be stopped from outside. The argv,
    working folder, environment, streams and Hydra state it sets belong to the whole process, so calls from
    several threads run one after another (a process started meanwhile inherits the environment outside
    the call)."""
    global _OUTSIDE
    import importlib
    import io
    import logging
    import traceback
    import warnings
    from contextlib import ExitStack, redirect_stderr, redirect_stdout

    from hydra.core.global_hydra import GlobalHydra

    main = importlib.import_module(f"transferlab.cli.{SCRIPTS[command]}").main
    out, err = io.StringIO(), io.StringIO()
    names = ["", *logging.root.manager.loggerDict]
    loggers = {n: (lg.handlers[:], lg.level, lg.propagate, lg.disabled) for n in names
               if isinstance(lg := logging.getLogger(n or None), logging.Logger)}
    _CLI.acquire()
    saved = sys.argv, os.getcwd(), dict(os.environ), warnings.showwarning
    _OUTSIDE = saved[2]
    sys.argv = [command, *map(str, args)]
    os.environ.update(env or {})
    os.chdir(cwd)
    GlobalHydra.instance().clear()
    code = 0
    try:
        with ExitStack() as stack:
            stack.enter_context(redirect_stdout(out))
            stack.enter_context(redirect_stderr(err))
            if "OMP_NUM_THREADS" in (env or {}):
                stack.enter_context(torch_threads(int(env["OMP_NUM_THREADS"])))
            try:
                main()
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else int(e.code is not None)
                if e.code is not None and not isinstance(e.code, int):
                    print(e.code, file=sys.stderr)  # sys.exit("message"), as Python prints it
            except Exception:  # noqa: BLE001 - what the interpreter does with an uncaught exception
                traceback.print_exc()
                code = 1
    finally:
        GlobalHydra.instance().clear()
        sys.argv, folder, environ, warnings.showwarning = saved
        os.chdir(folder)
        os.environ.clear()
        os.environ.update(environ)
        for n in [*logging.root.manager.loggerDict, ""]:  # Hydra configured logging for the call: undo it
            lg = logging.getLogger(n or None)
            if not isinstance(lg, logging.Logger):
                continue
            handlers, level, propagate, disabled = loggers.get(n, ([], logging.NOTSET, True, False))
            for h in set(lg.handlers) - set(handlers):
                h.close()
            lg.handlers[:], lg.level, lg.propagate, lg.disabled = handlers, level, propagate, disabled
        _OUTSIDE = None
        _CLI.release()
    return subprocess.CompletedProcess([command, *args], code, out.getvalue(), err.getvalue())


def process(command: str, *args, cwd: Path, env: dict | None = None, timeout: int = 600, drop: tuple = (),
            umask: int | None = None) -> subprocess.CompletedProcess:
    """Run a console script in a new process, exactly as a user would, capturing its output; ``drop`` removes
    variables from the inherited environment, ``umask`` is the one the process starts with."""
    environ = {k: v for k, v in (_OUTSIDE or os.environ).items() if k not in drop}
    return subprocess.run([str(BIN / command), *args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env={**environ, **(env or {})},
                          preexec_fn=None if umask is None else (lambda: os.umask(umask)))


# interrupt's run: 50 images per class in batches of 5: 50 steps an epoch, so a signal a second after the first
# checkpoint lands inside an epoch (the guarantee holds wherever it lands).
RUN = ["source=none", "logger=csv", "trainer.max_epochs=6", "data.batch_size=5", "data.train_per_class=50",
       "data.num_workers=0", "trainer.enable_progress_bar=false"]
_DEFAULT_SIGINT = ("import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
                   "os.execv(sys.argv[1], sys.argv[1:])")


def interrupt(run_dir: Path, sig: signal.Signals, cwd: Path, args=RUN, after: float = 1.0) -> tuple[int, str, int]:
    """Start ``tl-train args`` into ``run_dir``, send ``sig`` ``after`` seconds after its first last.ckpt
    appeared; (exit code, stderr, the epoch last.ckpt held when the signal was sent)."""
    from transferlab.models.checkpoint import read_checkpoint

    # a terminal delivers Ctrl-C to a process whose SIGINT is at its default; a suite started in the
    # background (nohup, `cmd &`, a CI runner) hands its children SIGINT ignored, and an ignored signal
    # stays ignored across exec: restore the default before tl-train starts
    proc = subprocess.Popen([sys.executable, "-c", _DEFAULT_SIGINT, str(BIN / "tl-train"), *args,
                             f"hydra.run.dir='{run_dir}'"], cwd=cwd, text=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
                            env={**os.environ, **ONE_THREAD})
    last = run_dir / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 300
    try:
        while not last.exists():
            assert proc.poll() is None, f"tl-train ended before its first checkpoint: {proc.stderr.read()[-3000:]}"
            assert time.monotonic() < deadline, "no checkpoints/last.ckpt in time"
            time.sleep(0.02)
        time.sleep(after)
        epoch = read_checkpoint(last)["epoch"]
        proc.send_signal(sig)
        _, stderr = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return proc.returncode, stderr, epoch


# --- DDP processes: tl-train ranks on loopback and what they wrote (tolerances: tests/test_distributed.py) ---

WEIGHT_ATOL = 1e-5
METRIC_ABS = 1e-6
RUN_TIMEOUT = 300            # seconds for any one distributed run (~25 s on 2 idle cores)
DIST_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK", "NODE_RANK", "MASTER_ADDR",
             "MASTER_PORT", "TORCHELASTIC_RUN_ID", "SLURM_NTASKS", "SLURM_PROCID", "SLURM_JOB_NAME", "PL_GLOBAL_SEED")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clean_env(**extra) -> dict:
    """This process's environment without any launcher's variables, one thread per process (2 cores)."""
    env = {k: v for k, v in os.environ.items() if k not in DIST_VARS and not k.startswith("SLURM_")}
    env.update(OMP_NUM_THREADS="1", MASTER_ADDR="127.0.0.1")
    if Path("/sys/class/net/lo").exists():
        env["GLOO_SOCKET_IFNAME"] = "lo"  # gloo talks over loopback only
    env.update(extra)
    return env


def launch(commands: list[tuple[list[str], dict]], cwd: Path, timeout: int = RUN_TIMEOUT) -> list[tuple[int, str]]:
    """Start every command at once (each in a session of its own), wait for all, return (rc, output) each.

    Whatever is still running at the deadline, or after one process failed and the others hang
    waiting for it, is killed by process group: each launched process and the ranks it started.
    """
    procs, logs = [], []
    try:
        for i, (argv, env) in enumerate(commands):
            log = open(cwd / f"launch-{i}.log", "w+")
            logs.append(log)
            procs.append(subprocess.Popen([str(a) for a in argv], cwd=cwd, env=env, stdout=log,
                                          stderr=subprocess.STDOUT, start_new_session=True))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and any(p.poll() is None for p in procs):
            if any(p.poll() not in (None, 0) for p in procs):  # one failed: give the others a moment, then stop
                deadline = min(deadline, time.monotonic() + 20)
            time.sleep(0.2)
    finally:
        for p in procs:
            try:
                os.killpg(p.pid, signal.SIGKILL)  # the group of a process this test started (and its ranks)
            except ProcessLookupError:
                pass
            p.wait(timeout=30)
    results = []
    for p, log in zip(procs, logs):
        log.seek(0)
        results.append((p.returncode, log.read()))
        log.close()
    return results


def tl_train(*args, cwd: Path, env: dict | None = None, timeout: int = RUN_TIMEOUT) -> str:
    ((rc, output),) = launch([([BIN / "tl-train", *args], env or clean_env())], cwd, timeout)
    assert rc == 0, output[-4000:]
    return output


def metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


def checkpoint(run_dir: Path, name: str = "last.ckpt") -> dict:
    import torch

    return torch.load(run_dir / "checkpoints" / name, map_location="cpu", weights_only=True)


def csv_column(run_dir: Path, column: str) -> list[float]:
    with open(run_dir / "csv" / "metrics.csv") as f:
        return [float(row[column]) for row in csv.DictReader(f) if row.get(column)]


# --- sweeps and studies: Optuna trials and the run directories they left ------------------------------------

def study_trials(url: str, name: str) -> list:
    """Read through the project's own opener: it takes the storage's file lock, so polling a study that a
    running search is still creating never races it to create the schema."""
    import optuna

    from transferlab.studies import open_storage

    return optuna.load_study(study_name=name, storage=open_storage(url)).get_trials(deepcopy=False)


def by_state(trials) -> dict[str, list]:
    out: dict[str, list] = {}
    for t in trials:
        out.setdefault(t.state.name, []).append(t)
    return out


def trial_dirs(root: Path) -> dict[int, list[Path]]:
    """Run directories of Optuna trials under ``root``: trial number -> directories (one, unless re-run)."""
    out: dict[int, list[Path]] = {}
    for config in root.rglob("config.yaml"):
        trial = (yaml.safe_load(config.read_text()) or {}).get("optuna_trial")
        if trial and config.parent.name not in (".hydra", "files"):  # Hydra's and W&B's copies
            out.setdefault(trial["number"], []).append(config.parent)
    return out


# --- text fixtures: tiny config-built BERTs with a tokenizer trained here and an MLM source run -------------

# A small corpus for the tokenizer, a small target set, a one-epoch MLM source run: every test shares
# the tokenizer and the source run through the session's cache.
CORPUS = "model.tokenizer.train_on=['data=synthetic_text','data.domain=source','data.num_samples=400']"
MLM_SOURCE = ("source.overrides=['data=synthetic_text','data.domain=source','data.num_samples=400','task=mlm',"
              "'source=none','strategy=finetune','logger=csv','trainer.max_epochs=1','trainer.enable_progress_bar=false']")
TEXT = ["model=tiny_bert", CORPUS, "data=synthetic_text", "data.num_samples=160", "data.batch_size=16",
        "tasks.main.column=topic", "logger=csv", "trainer.enable_progress_bar=false", "trainer.max_epochs=2"]
SOURCE = [*TEXT, MLM_SOURCE]


def text_run(tmp_path, *overrides, callbacks=()):
    from transferlab import run

    run.train(resolve(compose(*SOURCE, *overrides, run_dir=tmp_path)), callbacks=list(callbacks))
    return json.loads((tmp_path / "metrics.json").read_text())


# --- run folders: finished runs found on disk, made-up ones for the report and selection tests --------------

def run_dirs(root: Path) -> list[Path]:
    return sorted(p.parent for p in root.rglob("config.yaml") if (p.parent / "checkpoints").exists())


def fake_run(root: Path, name: str, *, strategy="finetune", seed=1, lr=0.003, extra=None, status="finished",
             epochs=4) -> Path:
    """A run directory as run.train leaves it, with made-up but reproducible numbers."""
    d = root / name
    (d / "csv").mkdir(parents=True)
    config = {"config_version": 2, "model": {"name": "tiny", "kind": "timm", "checkpoint": f"/cache/{name}/best.ckpt"},
              "data": {"kind": "digits", "label": "digits"}, "strategy": {"kind": strategy, "label": strategy},
              "optimizer": {"kind": "adamw", "lr": lr}, "seed": seed, "experiment_name": f"digits_{strategy}",
              "paths": {"run_dir": str(d)}, "logger": {"csv": {}}}
    cfg = OmegaConf.create(config)
    for key, value in (extra or {}).items():
        OmegaConf.update(cfg, key, value, force_add=True)
    (d / "config.yaml").write_text(yaml.safe_dump(OmegaConf.to_container(cfg)))
    rng = random.Random(f"{name}")
    if status == "failed":
        (d / "failed.json").write_text(json.dumps({"error": f"CUDA out of memory in {name}", "strategy": strategy,
                                                   "model": "tiny", "data": "digits", "seed": seed}))
    if status != "finished":
        return d
    rows = ["epoch,step,train/loss,val/acc"]
    for e in range(epochs):
        rows += [f"{e},{2 * e},{rng.random():.4f},", f"{e},{2 * e + 1},,{rng.uniform(0.3, 0.9)}"]
    (d / "csv" / "metrics.csv").write_text("\n".join(rows) + "\n")
    metrics = {"test/acc": rng.uniform(0.5, 0.95), "test/f1": rng.uniform(0.4, 0.9), "test/precision": rng.random(),
               "test/recall": rng.random(), "val/acc_best": rng.random(), "strategy": strategy, "model": "tiny",
               "data": "digits", "seed": seed, "trainable_params": 485 if strategy == "linear_probe" else 373173,
               "total_params": 373173, "fit_seconds": rng.uniform(1, 10), "epochs": epochs}
    (d / "metrics.json").write_text(json.dumps(metrics))
    return d


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))
