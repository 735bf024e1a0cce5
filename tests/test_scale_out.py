"""Beyond one machine: one Optuna study shared by several workers on a real PostgreSQL server (from the
Debian package, started here: ``postgres.Server``), a worker killed mid-trial and its trial retried, a
sweep through submitit's own local executor, and what a bad storage URL says.

The workers are ``tl-train`` processes started at once, because a process and its death are what is
tested, and submitit starts a process per job, which is its point; everything else runs in this process.
"""
from __future__ import annotations

import datetime
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from helpers import BIN, ONE_THREAD, by_state, cli, metrics, trial_dirs
from postgres import PASSWORD, Server

# A search whose trial has no source run, 10 images per class, CSV only: a few seconds in a worker.
SEARCH = ["hparams_search=optuna", "source=none", "logger=csv", "trainer.enable_progress_bar=false",
          "data.train_per_class=10", "hydra/sweeper/sampler=random"]


@pytest.fixture(scope="module")
def pg():
    with Server() as server:
        yield server


def search(tmp_path: Path, *overrides) -> subprocess.CompletedProcess:
    """``tl-train hparams_search=optuna ...`` through its entry point in this process."""
    return cli("tl-train", *SEARCH, "trainer.max_epochs=1", f"paths.output_dir={tmp_path}", *overrides,
               cwd=tmp_path, env=ONE_THREAD)


def assert_no_password(root: Path, *texts: str) -> None:
    assert all(PASSWORD not in text for text in texts)
    for path in root.rglob("*"):
        if path.is_file():
            assert PASSWORD.encode() not in path.read_bytes(), path


# ---------------------------------------------------------------------------------------------------
# Three workers, one study; one of them killed in the middle of a trial
# ---------------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_three_workers_share_one_postgres_study_and_a_killed_workers_trial_is_retried(pg, tmp_path):
    import optuna

    from transferlab.reports import write_report
    from transferlab.studies import open_storage

    n_trials, out = 6, tmp_path / "out"
    common = [*SEARCH, "trainer.max_epochs=3", f"paths.output_dir={out}", f"hydra.sweeper.storage={pg.url}",
              "hydra.sweeper.study_name=shared", f"hydra.sweeper.n_trials={n_trials}",
              "hydra.sweeper.heartbeat_interval=1", "hydra.sweeper.grace_period=8"]  # 7 missed beats' margin
    sweeps = [out / "multirun" / f"w{i}" for i in range(3)]  # a sweep folder each, as on machines of their own
    workers = [subprocess.Popen([str(BIN / "tl-train"), *common, f"hydra.sweep.dir={sweep}"], cwd=tmp_path,
                                env={**os.environ, **ONE_THREAD}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, start_new_session=True) for sweep in sweeps]
    storage, victim = None, None
    try:
        deadline = time.monotonic() + 300
        while victim is None and time.monotonic() < deadline:  # kill the first worker seen training a trial
            time.sleep(0.2)
            try:
                storage = storage or open_storage(pg.url)
                running = {t.number for t in optuna.load_study(study_name="shared", storage=storage).get_trials(
                    deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))}
            except KeyError:  # the study is not created yet
                continue
            for i, sweep in enumerate(sweeps):
                training = [n for n, dirs in trial_dirs(sweep).items() if n in running
                            and not (dirs[0] / "metrics.json").exists()]
                if training:
                    os.killpg(workers[i].pid, signal.SIGKILL)
                    victim, killed_at, lost_number = i, datetime.datetime.now(), training[0]
                    break
        assert victim is not None, "no worker was ever seen training a trial"
        outputs = [w.communicate(timeout=300)[0] for w in workers]
    finally:
        for w in workers:
            if w.poll() is None:
                os.killpg(w.pid, signal.SIGKILL)
    for i, (worker, output) in enumerate(zip(workers, outputs)):
        assert worker.returncode == (-signal.SIGKILL if i == victim else 0), output[-3000:]

    trials = optuna.load_study(study_name="shared", storage=storage).get_trials(deepcopy=False)
    states = by_state(trials)
    assert set(states) <= {"COMPLETE", "FAIL"} and len(states["COMPLETE"]) == n_trials  # the study's total
    lost = [t for t in states["FAIL"] if t.params]  # (a FAIL without params was asked and never run)
    assert [t.number for t in lost] == [lost_number] and "error" not in lost[0].user_attrs
    (retry,) = [t for t in states["COMPLETE"] if t.system_attrs.get("failed_trial") == lost_number]
    assert retry.params == lost[0].params and retry.datetime_start > killed_at  # the same point, run again

    # no trial ran twice: one run directory per trial number, metrics.json exactly for the complete ones,
    # each holding the value the study was told
    dirs = {n: d for sweep in sweeps for n, d in trial_dirs(sweep).items()}
    assert all(len(d) == 1 for d in dirs.values()) and lost_number in dirs
    assert {n for n, (d,) in dirs.items() if (d / "metrics.json").is_file()} == {t.number for t in states["COMPLETE"]}
    for t in states["COMPLETE"]:
        assert metrics(dirs[t.number][0])["val/acc_best"] == t.value
    assert dirs[retry.number][0].parent != sweeps[victim]  # run again by a worker still alive

    report = write_report([out / "multirun"])  # the whole study, from every worker's folder
    finished = {r.dir.resolve() for r in report.runs if r.status == "finished"}
    assert finished == {dirs[t.number][0].resolve() for t in states["COMPLETE"]}
    assert [r.status for r in report.runs if r.dir.resolve() == dirs[lost_number][0].resolve()] == ["incomplete"]
    assert report.study["trials"]["complete"] == n_trials and report.study["trials"]["lost"] >= 1
    assert f"{n_trials} complete" in report.markdown
    assert_no_password(out, *outputs)


def test_a_connection_the_server_dropped_during_a_long_epoch_is_replaced_not_failed(pg):
    """Between two reports a trial may train for hours; a server restart, an idle timeout or a proxy can
    close its pooled connections meanwhile. The next use checks the connection and opens a new one."""
    import optuna
    import psycopg

    from transferlab.studies import open_storage

    storage = open_storage(pg.url)
    study = optuna.create_study(study_name="dropped", storage=storage)
    trial = study.ask()
    with psycopg.connect(pg.url.replace("postgresql+psycopg", "postgresql"), autocommit=True) as admin:
        ended = admin.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE pid <> "
                              "pg_backend_pid() AND datname = 'studies'").fetchone()[0]
    assert ended >= 1  # the storage's pooled connection was among them
    trial.report(0.5, step=0)
    study.tell(trial, 0.5)
    assert [t.state.name for t in optuna.load_study(study_name="dropped", storage=storage).get_trials()] == ["COMPLETE"]
    assert storage.engine.pool.size() == 2  # a small pool per worker: many workers, one server


# ---------------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------------

def test_workers_with_different_search_spaces_for_one_study_are_refused(pg, tmp_path):
    storage = [f"hydra.sweeper.storage={pg.url}", "hydra.sweeper.study_name=space", "hydra.sweeper.n_trials=1"]
    first = ["optimizer.lr=tag(log,interval(1e-4,1e-2))", "optimizer.weight_decay=0.01"]
    assert search(tmp_path, *storage, *first, f"hydra.sweep.dir={tmp_path / 'a'}").returncode == 0
    for other, named in ((["optimizer.lr=tag(log,interval(1e-3,1e-1))", "optimizer.weight_decay=0.01"], "optimizer.lr"),
                         ([*first[:1], "optimizer.weight_decay=interval(0,0.1)"], "optimizer.weight_decay")):
        result = search(tmp_path, *storage, *other, "hydra.sweeper.n_trials=2", f"hydra.sweep.dir={tmp_path / 'b'}")
        err = result.stderr
        assert result.returncode == 2, err[-3000:]
        (line,) = [ln for ln in err.splitlines() if ln.startswith("error: ")]
        assert f"hydra.sweeper.params.{named} is searched as" in line and "study 'space'" in line, line
        assert PASSWORD not in err and "Traceback" not in err
    assert not (tmp_path / "b").exists() or not list((tmp_path / "b").rglob("config.yaml"))  # no trial ran


def test_an_unreachable_database_is_a_clear_error_within_seconds_naming_the_host_not_the_password(pg):
    from helpers import free_port

    from transferlab.errors import ConfigError
    from transferlab.studies import open_storage

    closed = pg.url.replace(f":{pg.port}/", f":{free_port()}/")
    wrong_password = pg.url.replace(PASSWORD, "not-the-Pw7")
    for url, host in ((closed, "127.0.0.1:"), (wrong_password, f"127.0.0.1:{pg.port}")):
        start = time.monotonic()
        with pytest.raises(ConfigError) as e:
            open_storage(url)
        assert time.monotonic() - start < 15
        message = str(e.value)
        assert f"the database server {host}" in message and "***@127.0.0.1" in message, message
        assert PASSWORD not in message and "not-the-Pw7" not in message
    assert "password authentication failed" in str(e.value)  # the server's own reason


def test_a_missing_database_driver_names_what_to_install(monkeypatch):
    from transferlab.errors import ConfigError
    from transferlab.studies import open_storage

    monkeypatch.setitem(sys.modules, "psycopg", None)  # as if transferlab[postgres] were not installed
    for url, install in (("postgresql://u:Secret-77@db:5432/studies", "pip install 'transferlab[postgres]'"),
                         ("postgresql+psycopg2://u:Secret-77@db/studies", "pip install psycopg2-binary"),
                         ("mysql+pymysql://u:Secret-77@db/studies", "pip install pymysql")):
        with pytest.raises(ConfigError) as e:
            open_storage(url)
        assert install in str(e.value) and "u:***@db" in str(e.value) and "Secret-77" not in str(e.value)
    for url in ("postgress://db/studies", "postgresql://db:port/studies"):
        with pytest.raises(ConfigError, match=f"{url} is not a database URL SQLAlchemy knows"):
            open_storage(url)


def test_a_password_of_any_characters_is_masked_and_redacted_wherever_it_is_quoted(monkeypatch):
    from transferlab import redact
    from transferlab.studies import STORAGE_ENV, pass_storage, real_url, shown

    monkeypatch.setenv(STORAGE_ENV, "")  # (what pass_storage sets is undone after the test)

    for url, password in (("postgresql+psycopg://tl:ab/cd+e@db:5432/studies", "ab/cd+e"),
                          ("postgresql+psycopg://tl:pa%40ss%2Fw0rd@db/studies?sslmode=require", "pa@ss/w0rd")):
        masked = shown(url)
        assert masked.startswith("postgresql+psycopg://tl:***@db") and password not in masked
        pass_storage(url)
        assert real_url(masked) == url  # a trial opens the real URL through the environment
        assert redact.scrub(f"connecting with {password}") == f"connecting with {redact.REDACTED}"


def test_a_grace_period_not_longer_than_the_heartbeat_is_refused(tmp_path):
    result = search(tmp_path, "hydra.sweeper.heartbeat_interval=10", "hydra.sweeper.grace_period=10")
    assert result.returncode == 2
    (line,) = [ln for ln in result.stderr.splitlines() if ln.startswith("error: ")]
    assert "hydra.sweeper.grace_period=10 must be longer than hydra.sweeper.heartbeat_interval=10" in line
    assert not list(tmp_path.rglob("config.yaml"))


def test_an_sqlite_study_with_trials_running_at_once_warns_to_use_a_database_server(caplog):
    """Only a launcher that runs jobs together (submitit, SLURM) with n_jobs > 1 on an SQLite file."""
    from hydra._internal.core_plugins.basic_launcher import BasicLauncher
    from hydra_plugins.hydra_submitit_launcher.submitit_launcher import LocalLauncher
    from hydra_plugins.transferlab_optuna.sweeper import OptunaSweeper

    sweeper = OptunaSweeper(sampler=None, direction="maximize", study_name=None, storage=None, n_trials=4, n_jobs=2,
                            max_failure_rate=1.0, pruner=None, heartbeat_interval=60, grace_period=None, max_retry=2,
                            params=None)
    warned = []
    for launcher, n_jobs, url in ((LocalLauncher(), 2, "sqlite:///s.db"), (BasicLauncher(), 2, "sqlite:///s.db"),
                                  (LocalLauncher(), 1, "sqlite:///s.db"), (LocalLauncher(), 2, "postgresql://db/s")):
        sweeper.launcher, sweeper.n_jobs = launcher, n_jobs
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            sweeper._warn_parallel_sqlite(url)
        warned.append(caplog.text)
    assert "hydra.sweeper.n_jobs=2 trials run at once through LocalLauncher" in warned[0]
    assert "use a database server" in warned[0] and "postgresql://" in warned[0]
    assert warned[1:] == ["", "", ""]


# ---------------------------------------------------------------------------------------------------
# submitit: the SLURM launcher's code path, run by submitit's own local executor
# ---------------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_a_search_through_submitit_local_runs_two_trials_at_once_in_their_own_processes(pg, tmp_path):
    """Two trials at once (n_jobs=2), each a submitit job in a process of its own that finds the study
    through the masked URL in its config and the real one in its environment. The password reaches no
    file: not the configs and Hydra's records, not what submitit pickles into the sweep folder (the
    launcher and its config), not W&B's offline runs (each trial's and the report's)."""
    import optuna

    from transferlab.runs import find_runs
    from transferlab.studies import open_storage

    sweep = tmp_path / "s"
    result = search(tmp_path, "hydra/launcher=submitit_local", "hydra.sweeper.n_jobs=2", "hydra.sweeper.n_trials=2",
                    f"hydra.sweeper.storage={pg.url}", "hydra.sweeper.study_name=submitit", f"hydra.sweep.dir={sweep}",
                    "logger=many")
    assert result.returncode == 0, result.stderr[-3000:]
    runs = find_runs([sweep])
    assert sorted(r.setting("optuna_trial.number") for r in runs) == [0, 1] and {r.status for r in runs} == {"finished"}
    # one submitit job each, named by its process id (the local executor's job id), each with its result
    jobs = [p for p in (sweep / ".submitit").iterdir() if p.name.isdigit()]
    assert len(jobs) == 2 and all(list(j.glob("*_result.pkl")) for j in jobs)
    assert str(os.getpid()) not in {j.name for j in jobs}  # not run in the sweeping process
    trials = optuna.load_study(study_name="submitit", storage=open_storage(pg.url)).get_trials()
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE"]
    assert all(len(t.intermediate_values) == 1 for t in trials)  # each job reported its epoch to the server
    assert "2 finished, 0 failed" in (sweep / "report.md").read_text()
    masked = pg.url.replace(PASSWORD, "***")
    assert yaml.safe_load((sweep / "optimization_results.yaml").read_text())["storage"] == masked
    assert {r.setting("optuna_trial.storage") for r in runs} == {masked}
    assert len(list(tmp_path.rglob("*.wandb"))) == 3  # the two trials' W&B runs and the report's, checked below
    assert "SQLite" not in result.stderr  # a database server: no warning
    assert_no_password(tmp_path, result.stdout, result.stderr)
