"""Optuna studies as transferlab keeps them, shared by the sweeper (hydra_plugins/transferlab_optuna)
and by each trial's run (pruning.py), which may be another process on another machine: both open the
study from its storage URL, so nothing is handed over in memory. SQLite serves one machine; workers on
many share a database server (PostgreSQL), opened here with settings fit for it. A URL's password is
never written: a trial's config names the storage masked, and the real URL reaches the trial through
``STORAGE_ENV``.
"""
from __future__ import annotations

import fcntl
import functools
import os
import urllib.parse
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import optuna

from transferlab import redact
from transferlab.errors import ConfigError
from transferlab.registry import Registry
from transferlab.settings import NON_NEGATIVE_INT, POSITIVE_INT, Settings, setting

PRUNERS = Registry("hydra.sweeper.pruner", "pruner", modules=("transferlab.studies",))
PRUNER = "pruner"  # study user attr: {kind, **arguments}, read by every trial to prune as its sweeper asked


@dataclass(kw_only=True)
class Pruner(Settings):
    """An Optuna pruner (``hydra/sweeper/pruner=<kind>``): stops unpromising trials after a validation epoch."""
    kind: str

    def create(self) -> optuna.pruners.BasePruner:
        raise NotImplementedError


@PRUNERS.register("median")
@dataclass(kw_only=True)
class Median(Pruner):
    """Stop a trial below the median of earlier trials at the same epoch."""
    kind: str = "median"
    n_startup_trials: int = setting(5, NON_NEGATIVE_INT)  # complete trials before any pruning
    n_warmup_steps: int = setting(0, NON_NEGATIVE_INT)  # epochs of a trial that are never pruned
    interval_steps: int = setting(1, POSITIVE_INT)
    n_min_trials: int = setting(1, POSITIVE_INT)

    def create(self):
        return optuna.pruners.MedianPruner(self.n_startup_trials, self.n_warmup_steps, self.interval_steps,
                                           n_min_trials=self.n_min_trials)


@PRUNERS.register("hyperband")
@dataclass(kw_only=True)
class Hyperband(Pruner):
    """Successive halving over several brackets."""
    kind: str = "hyperband"
    min_resource: int = setting(1, POSITIVE_INT)  # epochs every trial gets
    reduction_factor: int = setting(3, (lambda v: v >= 2, "an integer >= 2"))

    def create(self):
        return optuna.pruners.HyperbandPruner(min_resource=self.min_resource, reduction_factor=self.reduction_factor)


@PRUNERS.register("successive_halving")
@dataclass(kw_only=True)
class SuccessiveHalving(Pruner):
    """One bracket of successive halving."""
    kind: str = "successive_halving"
    min_resource: int = setting(1, POSITIVE_INT)
    reduction_factor: int = setting(4, (lambda v: v >= 2, "an integer >= 2"))

    def create(self):
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=self.min_resource,
                                                      reduction_factor=self.reduction_factor)
ERROR = "error"  # trial user attr: the job ran and failed. A FAIL without it was lost (its sweeper died).
OBJECTIVE = "objective"  # study user attr: the metrics.json key every trial returns (one study, one metric)
# The storage URL with its password, for the trials of this sweeper's process and the processes it starts
# (SLURM jobs, DDP ranks): a trial's config holds the URL masked (redact.mask_url), never the password.
STORAGE_ENV = "TRANSFERLAB_OPTUNA_STORAGE"


class MissingObjective(ConfigError):
    """A trial's run finished without the ``objective`` key in its metrics: the search must stop, since
    every other trial would train in vain (raised by tl-train in an Optuna trial, read by the sweeper)."""


def missing_objective(objective: str, metrics: dict) -> MissingObjective:
    keys = ", ".join(sorted(k for k in metrics if isinstance(metrics[k], (int, float)) and not k.startswith("lr/")))
    return MissingObjective(f"objective={objective} is not in this run's metrics.json, which reports {keys}; "
                            f"give objective=one of its val/ keys (e.g. objective=val/acc_best)")


def _password(url: str) -> str | None:
    """The password of a database URL as SQLAlchemy reads it (any character, percent-encoded or not)."""
    import sqlalchemy

    try:
        return sqlalchemy.engine.make_url(url).password
    except (sqlalchemy.exc.ArgumentError, ValueError):
        return None


def shown(url: str) -> str:
    """A storage URL as it may be printed or written: its password masked (``user:***@host``)."""
    if _password(url) is None:
        return redact.mask_url(url)
    import sqlalchemy

    return sqlalchemy.engine.make_url(url).render_as_string(hide_password=True)


def pass_storage(url: str) -> None:
    """Hand the real storage URL to this process's trials (and the processes they start) without writing it."""
    if shown(url) != url:
        password = _password(url) or ""
        for value in (password, urllib.parse.quote(password, safe=""), urllib.parse.quote_plus(password)):
            redact.remember_value(value)
        redact.remember(url)
        os.environ[STORAGE_ENV] = url


def real_url(url: str) -> str:
    """The URL a trial opens: its config holds ``url`` masked; the sweeper passed the real one (``STORAGE_ENV``)."""
    if f":{redact.MASK}@" not in url:
        return url
    passed = os.environ.get(STORAGE_ENV, "")
    if passed and shown(passed) == url:
        return passed
    raise ConfigError(f"optuna_trial.storage={url} has its password masked, and {STORAGE_ENV} does not hold that "
                      f"storage's URL; only the Optuna sweeper sets optuna_trial (and {STORAGE_ENV})")


def absolute(url: str) -> str:
    """A relative SQLite path made absolute: a trial running elsewhere (SLURM) must open the same file."""
    prefix = "sqlite:///"
    path = url[len(prefix):]
    if url.startswith(prefix) and path and not path.startswith("/") and path != ":memory:":
        return prefix + str(Path(path).resolve())
    return url


# A database server is shared by many workers, each holding the sweeper's connections, its heartbeat
# thread's and its trial's, across epochs that may last hours: a few connections each (PostgreSQL allows
# 100 by default), each checked before use (a server or firewall may have closed an idle one), and a
# connection attempt that gives up within seconds instead of hanging on an unreachable host.
SERVER_ENGINE = {"pool_pre_ping": True, "pool_size": 2, "max_overflow": 2, "pool_recycle": 1800}
CONNECT_TIMEOUT_S = 10
# libpq: give up connecting after CONNECT_TIMEOUT_S; TCP keepalives find a peer that vanished without
# closing its socket (a worker's machine powered off while it held the study's lock) in about a minute
POSTGRES_CONNECT = {"connect_timeout": CONNECT_TIMEOUT_S, "keepalives": 1, "keepalives_idle": 30,
                    "keepalives_interval": 10, "keepalives_count": 3}
CONNECT_ARGS = {"postgresql": POSTGRES_CONNECT, "mysql": {"connect_timeout": CONNECT_TIMEOUT_S}}
# the package that brings each database driver SQLAlchemy may ask for (its driver name -> pip install)
DRIVERS = {"psycopg": "'transferlab[postgres]' (psycopg 3)", "psycopg2": "psycopg2-binary",
           "asyncpg": "asyncpg", "pg8000": "pg8000", "pymysql": "pymysql", "mysqldb": "mysqlclient",
           "mysqlconnector": "mysql-connector-python", "oracledb": "oracledb", "pyodbc": "pyodbc"}


def engine_kwargs(url: str) -> dict:
    """SQLAlchemy engine settings for a storage: SQLite waits up to a minute for a lock instead of failing
    while other processes write; a database server gets ``SERVER_ENGINE`` (and its driver's connect settings)."""
    if url.startswith("sqlite"):
        return {"connect_args": {"timeout": 60}}
    backend = url.split(":", 1)[0].split("+", 1)[0]
    return {**SERVER_ENGINE, "connect_args": dict(CONNECT_ARGS.get(backend, {}))}


def _check_driver(url: str) -> None:
    """A URL SQLAlchemy cannot parse, a database it does not know, or a driver that is not installed: said
    before any connection, with what to install."""
    import sqlalchemy

    try:
        dialect = sqlalchemy.engine.make_url(url).get_dialect()
    except (sqlalchemy.exc.ArgumentError, sqlalchemy.exc.NoSuchModuleError, ValueError):
        raise ConfigError(f"hydra.sweeper.storage={shown(url)} is not a database URL SQLAlchemy knows; give one "
                          f"such as sqlite:///study.db or postgresql+psycopg://user@host/studies") from None
    try:
        dialect.import_dbapi()
    except ImportError as e:
        driver = dialect.driver
        raise ConfigError(f"hydra.sweeper.storage={shown(url)} needs the database driver {driver}, which cannot "
                          f"be imported ({e}): pip install {DRIVERS.get(driver, driver)}") from None


def open_storage(url: str, heartbeat_interval: int | None = None, grace_period: int | None = None,
                 max_retry: int | None = None):
    """The study storage at ``url``. With a heartbeat, a trial found lost (its worker died) has its
    parameters tried again by whichever worker asks next, up to ``max_retry`` times (Optuna's
    ``RetryHeartbeatStaleTrialCallback``). Processes opening a new database take turns (``exclusive``): creating
    the schema at once, one of them fails."""
    _check_driver(url)
    retry = (optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=max_retry)
             if heartbeat_interval and max_retry else None)
    try:
        with exclusive(url):
            return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs(url),
                                              heartbeat_interval=heartbeat_interval, grace_period=grace_period,
                                              heartbeat_stale_trial_callback=retry)
    except ConfigError:
        raise
    except Exception as e:  # noqa: BLE001 - SQLAlchemy's connection and database errors
        raise ConfigError(unreachable(url, e)) from None


def unreachable(url: str, error: Exception) -> str:
    """Why the storage cannot be opened, naming its host (never its password) and the server's own words."""
    import sqlalchemy

    reason = str(getattr(error, "orig", None) or error).strip().splitlines()
    reason = redact.scrub(reason[0] if reason else type(error).__name__)
    password = _password(url)
    reason = reason.replace(password, redact.REDACTED) if password else reason
    where = sqlalchemy.engine.make_url(url)
    if where.get_backend_name() != "sqlite":
        server = f"{where.host}:{where.port or 'default port'}" if where.host else "(its default socket)"
        return (f"hydra.sweeper.storage={shown(url)}: the database server {server} cannot be used ({reason}); "
                f"check that it runs, that this machine reaches it, and the URL's user, password and database")
    return (f"hydra.sweeper.storage={shown(url)} cannot be opened ({type(error).__name__}: {reason}); give a "
            f"database URL such as sqlite:///study.db")


ADVISORY_LOCK = 0x7472616E73666572  # PostgreSQL advisory lock key of transferlab's study set-up ("transfer")


@contextmanager
def exclusive(url: str):
    """One process at a time in the block, across machines: an SQLite file's own ``flock`` (which SQLite's
    POSIX locks do not see, so nothing but the study is left beside it), a PostgreSQL advisory lock on a
    connection of its own (released when it closes, even if this process dies). Other databases: none."""
    if url.startswith("postgresql"):
        import sqlalchemy

        engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool,
                                          connect_args=engine_kwargs(url)["connect_args"])
        try:
            with engine.connect() as connection:
                connection.execute(sqlalchemy.text("SELECT pg_advisory_lock(:key)"), {"key": ADVISORY_LOCK})
                connection.commit()
                yield
        finally:
            engine.dispose()
        return
    path = url[len("sqlite:///"):] if url.startswith("sqlite:///") else ""
    if not path or path == ":memory:":
        yield
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "ab") as lock:  # an empty new file is an empty SQLite database
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def create_pruner(spec: dict | None) -> optuna.pruners.BasePruner:
    """``{kind, **arguments}`` -> the pruner; ``None`` or no kind never prunes (``name`` is how
    studies created before ``kind`` spelt it)."""
    spec = dict(spec or {})
    if "name" in spec and "kind" not in spec:
        spec["kind"] = spec.pop("name")
    if not spec.get("kind"):
        return optuna.pruners.NopPruner()
    return PRUNERS.parse(spec, "hydra.sweeper.pruner").create()


@functools.cache
def _trials_storage(url: str):
    """One storage (one small connection pool) per process for every trial it runs: a worker running
    hundreds of trials in-process must not hold a pool for each."""
    return open_storage(url)


def load_trial(spec) -> optuna.Trial:
    """The live trial ``optuna_trial={storage, study, number}`` names, with its study's pruner."""
    storage = _trials_storage(real_url(spec["storage"]))
    try:
        study_id = storage.get_study_id_from_name(spec["study"])
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, int(spec["number"]))
    except KeyError:
        raise ConfigError(f"optuna_trial names trial {spec['number']} of study '{spec['study']}' in "
                          f"{shown(spec['storage'])}, which has no such trial; only the Optuna sweeper sets "
                          f"optuna_trial") from None
    pruner = create_pruner(storage.get_study_user_attrs(study_id).get(PRUNER))
    study = optuna.load_study(study_name=spec["study"], storage=storage, pruner=pruner,
                              sampler=optuna.samplers.RandomSampler())  # a trial reports; it never samples
    return optuna.Trial(study, trial_id)


def lost(trial: optuna.trial.FrozenTrial) -> bool:
    """A trial whose worker died (or that was asked past ``n_trials`` and never run): FAIL without an error."""
    return trial.state == optuna.trial.TrialState.FAIL and ERROR not in trial.user_attrs


def counted(trial: optuna.trial.FrozenTrial) -> bool:
    """A trial that used up one of ``n_trials``: complete, pruned, or failed in its job (not lost)."""
    states = optuna.trial.TrialState
    return trial.state in (states.COMPLETE, states.PRUNED) or (trial.state == states.FAIL and not lost(trial))
