"""Trials per minute of one Optuna study with 1 and with 3 workers on a PostgreSQL server, and how long a
killed worker's trial waits to be run again. Each worker is a real ``tl-train hparams_search=optuna``
process; every trial is the same tiny digits run (same trial cost). Throughput counts from the first
trial's start to the last trial's end in the study, so the workers' start-up is left out.

    python scripts/bench_workers.py                  # starts a throwaway server (Debian's postgresql)
    python scripts/bench_workers.py --storage postgresql+psycopg://user:pw@host/db --trials 24
"""
from __future__ import annotations

import argparse
import datetime
import functools
import os
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TRIAL = ["hparams_search=optuna", "source=none", "logger=csv", "trainer.enable_progress_bar=false",
         "data.train_per_class=10", "trainer.max_epochs=3", "hydra/sweeper/sampler=random",
         "hydra.sweeper.heartbeat_interval=1"]


def workers(n: int, url: str, study: str, trials: int, out: Path, grace: int = 120) -> list[subprocess.Popen]:
    command = [str(Path(sys.executable).parent / "tl-train"), *TRIAL, f"hydra.sweeper.storage={url}",
               f"hydra.sweeper.study_name={study}", f"hydra.sweeper.n_trials={trials}",
               f"hydra.sweeper.grace_period={grace}", f"paths.output_dir={out}"]
    return [subprocess.Popen([*command, f"hydra.sweep.dir={out / study / f'w{i}'}"], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, env={**os.environ, "OMP_NUM_THREADS": "1"},
                             start_new_session=True) for i in range(n)]


@functools.cache
def storage_at(url: str):
    from transferlab.studies import open_storage

    return open_storage(url)


def trials_of(url: str, study: str):
    import optuna

    return optuna.load_study(study_name=study, storage=storage_at(url)).get_trials(deepcopy=False)


def throughput(url: str, study: str) -> tuple[float, int]:
    done = [t for t in trials_of(url, study) if t.state.name == "COMPLETE"]
    span = max(t.datetime_complete for t in done) - min(t.datetime_start for t in done)
    return len(done) / (span.total_seconds() / 60), len(done)


def retry_delay(url: str, out: Path, trials: int, grace: int) -> tuple[float, float]:
    """Seconds from a worker's SIGKILL mid-trial to its trial's parameters starting again, and to their end."""
    study = f"killed-{os.getpid()}"
    procs = workers(3, url, study, trials, out, grace)
    try:
        while True:
            time.sleep(0.2)
            try:
                running = [t for t in trials_of(url, study) if t.state.name == "RUNNING"]
            except KeyError:
                continue
            sweeps = {i: out / study / f"w{i}" for i in range(3)}
            victim = next((i for i, d in sweeps.items() for t in running
                           if (d / str(t.number) / "config.yaml").is_file()
                           and not (d / str(t.number) / "metrics.json").exists()), None)
            if victim is not None:
                number = next(t.number for t in running if (sweeps[victim] / str(t.number)).is_dir())
                os.killpg(procs[victim].pid, signal.SIGKILL)
                killed = datetime.datetime.now()
                break
        for p in procs:
            p.wait()
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
    (retry,) = [t for t in trials_of(url, study) if t.system_attrs.get("failed_trial") == number]
    return (retry.datetime_start - killed).total_seconds(), (retry.datetime_complete - killed).total_seconds()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--storage", help="a PostgreSQL URL; default: start a throwaway server here")
    parser.add_argument("--trials", type=int, default=12, help="trials per study")
    parser.add_argument("--grace", type=int, default=3, help="hydra.sweeper.grace_period of the kill run (s, > 1)")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO / "tests"))
    from postgres import Server  # the tests' throwaway server

    with (nullcontext() if args.storage else Server()) as server, tempfile.TemporaryDirectory() as tmp:
        url = args.storage or server.url
        for n in (1, 3):
            start = time.monotonic()
            study = f"workers{n}-{os.getpid()}"  # a new study each run, also on a server given with --storage
            procs = workers(n, url, study, args.trials, Path(tmp))
            codes = [p.wait() for p in procs]
            rate, done = throughput(url, study)
            print(f"{n} worker(s): {rate:.1f} trials/min ({done} trials; {time.monotonic() - start:.0f} s with "
                  f"start-up; exit codes {codes})", flush=True)
            if n == 1:
                one = rate
        print(f"3 workers / 1 worker: {rate / one:.2f}x")
        started, ended = retry_delay(url, Path(tmp), args.trials, args.grace)
        print(f"killed worker's trial: run again {started:.1f} s after the SIGKILL (grace_period={args.grace} s, "
              f"heartbeat_interval=1 s), finished {ended:.1f} s after it")


if __name__ == "__main__":
    main()
