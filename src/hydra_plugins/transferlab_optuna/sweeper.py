"""Hydra's Sweeper over Optuna's ask-and-tell: ask a batch of trials, run them as jobs of the multirun
through Hydra's launcher (local, SLURM, ...), tell Optuna each result.

The study lives in a database (by default ``<sweep dir>/optuna.db``, SQLite), never only in memory:
a killed search continues when started again, several sweepers on one storage share ``n_trials``,
and each trial reports its epochs into the study from whatever process runs it (``optuna_trial``).
"""
from __future__ import annotations

import functools
import logging
import math
import os
import sys
import threading
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Transformer
from hydra.core.plugins import Plugins
from hydra.core.utils import JobStatus
from hydra.plugins.sweeper import Sweeper
from omegaconf import DictConfig, OmegaConf, open_dict

log = logging.getLogger(__name__)

RESULTS = "optimization_results.yaml"  # in the sweep directory, read by the report
HISTORY = "optimization_history.png"


class SweepError(Exception):
    """What the user must change or know: printed as one ``error: ...`` paragraph. Exit status 2 for a
    setting the user must change (as every command's refusals), 1 for a search that ran and failed."""

    def __init__(self, message: str, exit_code: int = 2):
        super().__init__(message)
        self.exit_code = exit_code


def _distribution(override):
    """A Hydra sweep (``interval``, ``tag(log, interval)``, ``range``, ``choice``, ``a,b``) as an Optuna
    distribution; ``None`` for a plain value, which every trial gets as it was written."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    if not override.is_sweep_override():
        return None
    value = override.value()
    if override.is_interval_sweep():
        kind = IntDistribution if isinstance(value.start, int) and isinstance(value.end, int) else FloatDistribution
        return kind(value.start, value.end, log="log" in value.tags)
    choices = list(override.sweep_iterator(transformer=Transformer.encode))
    if override.is_range_sweep() and not value.shuffle and len(choices) > 1:
        kind = IntDistribution if all(isinstance(c, int) for c in choices) else FloatDistribution
        return kind(min(choices), max(choices), step=abs(value.step))
    return CategoricalDistribution(choices)


def _from_mapping(key: str, spec: dict):
    """Optuna's own form: ``{type: float|int, low, high, log, step}`` or ``{type: categorical, choices}``."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    kinds = {"float": FloatDistribution, "int": IntDistribution, "categorical": CategoricalDistribution}
    args = dict(spec)
    kind = args.pop("type", None)
    try:
        return kinds[kind](**args)
    except (KeyError, TypeError, ValueError) as e:
        raise SweepError(f"error: hydra.sweeper.params.{key}={spec} is not a distribution ({e}); write "
                         f"{{type: float, low: 1e-4, high: 1e-2, log: true}}, {{type: int, low: 1, high: 8, step: 1}}, "
                         f"{{type: categorical, choices: [a, b]}}, or Hydra's sweep syntax "
                         f"(interval(0, 1), tag(log, interval(1e-4, 1e-2)), range(1, 9), choice(a, b))") from None


def search_space(params: dict | None, arguments: list[str]) -> tuple[dict, dict]:
    """``hydra.sweeper.params``, then the command line's overrides (a later key wins): the distributions
    to sample, and the plain overrides (key -> override text) passed to every trial."""
    space, fixed = {}, {}
    entries = [(k, v) for k, v in (params or {}).items()] + [(None, a) for a in arguments]
    for key, value in entries:
        if isinstance(value, dict):
            space[key] = _from_mapping(key, value)
            fixed.pop(key, None)
            continue
        text = value if key is None else f"{key}={value}"
        (override,) = OverridesParser.create().parse_overrides([text])
        name = override.get_key_element()
        space.pop(name, None), fixed.pop(name, None)
        distribution = _distribution(override)
        if distribution is None:
            fixed[name] = text
        else:
            space[name] = distribution
    return space, fixed


def _grid(space: dict) -> dict:
    """GridSampler's search space: every value of each (discrete) distribution."""
    from optuna.distributions import CategoricalDistribution

    grid = {}
    for name, d in space.items():
        if isinstance(d, CategoricalDistribution):
            grid[name] = list(d.choices)
        elif d.step is not None and not d.log:
            grid[name] = [d.low + i * d.step for i in range(int(round((d.high - d.low) / d.step)) + 1)]
        else:
            raise SweepError(f"error: hydra.sweeper.params.{name} is a continuous interval, and the grid sampler "
                             f"needs listed values: choice(...), range(...) or {{type: float, low, high, step}}")
    return grid


def _grid_sampler(partial: functools.partial, space: dict):
    """The grid sampler over ``space``, which never calls ``Study.stop`` (that works only inside
    ``Study.optimize``; this sweeper itself stops once the grid is used up)."""
    from optuna.samplers import GridSampler

    class Grid(GridSampler):
        def after_trial(self, study, trial, state, values) -> None:
            pass

    kind = Grid if partial.func is GridSampler else partial.func
    return kind(*partial.args, search_space=_grid(space), **partial.keywords)


def _grid_left(sampler, study) -> int | None:
    """Points of the grid that no trial has taken yet (finished or running); ``None``: not a grid search."""
    import optuna

    if not isinstance(sampler, optuna.samplers.GridSampler):
        return None
    size = len(sampler._all_grids)
    from transferlab.studies import lost

    # a lost trial's point is free: its retry (WAITING until asked) takes it
    taken = {t.system_attrs["grid_id"] for t in study.get_trials(deepcopy=False)
             if "grid_id" in t.system_attrs and t.state != optuna.trial.TrialState.WAITING and not lost(t)}
    return max(size - len(taken), 0)


def _clashes(study, space: dict) -> str | None:
    """Why the study cannot take ``space``: a key its trials searched with another kind of distribution
    (Optuna refuses to mix them in one study), or ``None``."""
    from optuna.distributions import check_distribution_compatibility

    for trial in study.get_trials(deepcopy=False):
        for key, old in trial.distributions.items():
            if key in space:
                try:
                    check_distribution_compatibility(old, space[key])
                except ValueError:
                    return (f"{key} is searched as {space[key]}, and study '{study.study_name}' already searched it "
                            f"as {old} (trial {trial.number}); Optuna cannot mix the two in one study: search "
                            f"{key} as the study did, or give another hydra.sweeper.study_name or storage")
    return None


SPACE = "search_space"  # study user attr: {key: distribution as JSON}, the space every worker of it searches


def _space_json(space: dict) -> dict:
    from optuna.distributions import distribution_to_json

    return {k: distribution_to_json(d) for k, d in sorted(space.items())}


def _other_space(study, shown: str, space: dict) -> str | None:
    """Why this search cannot join the study: workers of one study search one space (same keys, same
    ranges), or its sampler and best value would mix two searches. ``None`` for a study that recorded
    none (made before transferlab recorded it): it takes this one."""
    from optuna.distributions import json_to_distribution

    recorded = study.user_attrs.get(SPACE)
    if recorded is None:
        return None
    for key in sorted(set(recorded) | set(space)):
        theirs = json_to_distribution(recorded[key]) if key in recorded else None
        if theirs != space.get(key):
            ours = space.get(key, "a plain value (not searched)")
            return (f"hydra.sweeper.params.{key} is searched as {ours}, and study '{study.study_name}' in {shown} "
                    f"searches it as {theirs or 'a plain value (not searched)'}; every worker of one study "
                    f"searches the same space: give the study's params, or another hydra.sweeper.study_name")
    return None


def _first(distribution):
    """One value of a distribution: its low end, or its first choice."""
    return distribution.choices[0] if hasattr(distribution, "choices") else distribution.low


def _text(value) -> str:
    """A sampled value as Hydra override text."""
    return "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


def _quoted(text: str) -> str:
    return "'" + str(text).replace("\\", "\\\\").replace("'", "\\'") + "'"


@contextmanager
def _quiet():
    """Optuna warns that heartbeats, fail_stale_trials and its matplotlib plots are experimental, and
    that heartbeats are meant for Study.optimize: this sweeper is the ask-and-tell loop they assume."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


@contextmanager
def _heartbeat(storage, trials, interval: int):
    """Mark the trials alive while their jobs run: another sweeper then tells them from lost ones."""
    stop = threading.Event()

    def beat():
        while True:
            for trial in trials:
                try:
                    storage.record_heartbeat(trial._trial_id)
                except Exception as e:  # noqa: BLE001 - a busy database: try again at the next beat
                    log.debug("heartbeat of trial %d not recorded: %s", trial.number, e)
            if stop.wait(interval):
                return

    thread = threading.Thread(target=beat, name="optuna-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


class OptunaSweeper(Sweeper):
    def __init__(self, sampler: Any, direction: str, study_name: str | None, storage: str | None, n_trials: int,
                 n_jobs: int, max_failure_rate: float, pruner: DictConfig | None,
                 heartbeat_interval: int, grace_period: int | None, max_retry: int,
                 params: DictConfig | None) -> None:
        self.sampler, self.direction, self.study_name, self.storage = sampler, direction, study_name, storage
        self.n_trials, self.n_jobs, self.max_failure_rate = n_trials, n_jobs, max_failure_rate
        spec = OmegaConf.to_container(pruner, resolve=True) if OmegaConf.is_config(pruner) else pruner
        self.pruner = spec if spec and spec.get("kind") else None
        self.heartbeat_interval, self.grace_period, self.max_retry = heartbeat_interval, grace_period, max_retry
        self.params = OmegaConf.to_container(params) if params is not None else {}

    def setup(self, *, hydra_context, task_function, config: DictConfig) -> None:
        self.config, self.hydra_context = config, hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(config=config, hydra_context=hydra_context,
                                                                task_function=task_function)

    def sweep(self, arguments: list[str]) -> None:
        try:
            self._sweep(arguments)
        except SweepError as e:
            print(e, file=sys.stderr)
            sys.exit(e.exit_code)

    def _sweep(self, arguments: list[str]) -> None:
        from transferlab import studies
        from transferlab.errors import ConfigError
        from transferlab.metrics import check_selection

        self._check()
        objective = OmegaConf.select(self.config, "objective")
        try:
            check_selection(objective, "objective")  # Optuna chooses by it: never a test metric
        except ConfigError as e:
            raise SweepError(f"error: {e}") from None
        space, fixed = search_space(self.params, arguments)
        self._check_config(space, fixed)
        sampler = _grid_sampler(self.sampler, space) if isinstance(self.sampler, functools.partial) else self.sampler
        sweep_dir = Path(self.config.hydra.sweep.dir)
        url = studies.absolute(self.storage or f"sqlite:///{sweep_dir / 'optuna.db'}")
        shown = studies.shown(url)  # what is printed and written: the password masked
        studies.pass_storage(url)  # the trials' route to the real URL
        self._mask_storage(url, shown)
        try:
            studies.create_pruner(self.pruner)  # a bad name or argument: an error now, not in every trial
            folder = sweep_dir
            try:
                sweep_dir.mkdir(parents=True, exist_ok=True)
                if url.startswith("sqlite:///"):
                    folder = Path(url[len("sqlite:///"):]).parent
                    folder.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                if folder == sweep_dir:
                    raise SweepError(f"error: the sweep folder hydra.sweep.dir={sweep_dir} cannot be created "
                                     f"({e.strerror or e}); give a folder you can write") from None
                raise SweepError(f"error: the folder {folder} of hydra.sweeper.storage={shown} cannot be created "
                                 f"({e.strerror or e}); give a storage in a folder you can write, such as "
                                 f"sqlite:///study.db") from None
            with _quiet():
                storage = studies.open_storage(url, self.heartbeat_interval, self.grace_period, self.max_retry)
        except ConfigError as e:
            raise SweepError(f"error: {e}") from None
        self._warn_parallel_sqlite(url)
        name = self.study_name or sweep_dir.name
        with studies.exclusive(url):  # workers starting at once: one creates the study, the others check it
            study = self._join(storage, sampler, name, shown, objective, space)
        done = sum(map(studies.counted, study.get_trials(deepcopy=False)))
        log.info("Optuna study '%s' in %s: %d of %d trials done; %s over %s", name, shown, done, self.n_trials,
                 type(sampler).__name__, ", ".join(space) or "nothing")
        self._search(study, storage, space, fixed, url)
        self._summarise(study, url, sweep_dir)

    def _join(self, storage, sampler, name: str, shown: str, objective: str, space: dict):
        """The study, created or loaded; refused when it was made for another direction, objective or
        search space (one best value cannot mix them)."""
        import optuna

        from transferlab import studies

        study = optuna.create_study(storage=storage, sampler=sampler, study_name=name, direction=self.direction,
                                    load_if_exists=True)
        if study.direction.name.lower() != self.direction:
            raise SweepError(f"error: study '{name}' in {shown} was created to {study.direction.name.lower()}, and "
                             f"hydra.sweeper.direction={self.direction}; give another study_name or storage")
        searched = study.user_attrs.get(studies.OBJECTIVE)
        if searched is not None and searched != objective:
            raise SweepError(f"error: study '{name}' in {shown} searched objective={searched}, and this search's "
                             f"objective={objective}: one best value cannot mix two metrics; search objective="
                             f"{searched}, or give another hydra.sweeper.study_name or storage")
        clash = _clashes(study, space) or _other_space(study, shown, space)
        if clash:
            raise SweepError(f"error: {clash}")
        study.set_user_attr(studies.OBJECTIVE, objective)
        study.set_user_attr(studies.PRUNER, self.pruner)
        study.set_user_attr(SPACE, _space_json(space))
        return study

    def _mask_storage(self, url: str, shown: str) -> None:
        """The launcher keeps the sweep's config, saves it (multirun.yaml) and submitit pickles it into the
        sweep folder: from here on it holds the storage masked, the jobs compose theirs from it, and trials
        open the real URL through ``studies.STORAGE_ENV``."""
        from omegaconf import read_write

        from transferlab import redact

        if shown == url:
            return
        with read_write(self.config.hydra), open_dict(self.config.hydra):
            self.config.hydra.sweeper.storage = shown
            self.config.hydra.overrides.hydra = [redact.scrub(o.replace(url, shown))
                                                 for o in self.config.hydra.overrides.hydra]

    def _warn_parallel_sqlite(self, url: str) -> None:
        """SQLite locks its whole file for each write and must not live on a network file system: trials
        running at once (a launcher that starts jobs together, n_jobs > 1) belong on a database server."""
        from hydra._internal.core_plugins.basic_launcher import BasicLauncher

        if url.startswith("sqlite") and self.n_jobs > 1 and not isinstance(self.launcher, BasicLauncher):
            log.warning("hydra.sweeper.storage=%s is an SQLite file, and hydra.sweeper.n_jobs=%d trials run at once "
                        "through %s: SQLite locks the whole file for each write and breaks on network file "
                        "systems; use a database server, e.g. hydra.sweeper.storage=postgresql://user@host/studies "
                        "(README: Scale out)", url, self.n_jobs, type(self.launcher).__name__)

    def _check_config(self, space: dict, fixed: dict) -> None:
        """A trial's config at one point of the space, resolved as tl-train resolves each job (a pure step:
        nothing is written or trained): a key no setting reads (``+optimizer.lrr=...``) or a value its group
        refuses stops the search before the first trial, instead of failing every trial alike."""
        from hydra.core.hydra_config import HydraConfig

        from transferlab.errors import TransferlabError
        from transferlab.plan import resolve

        point = [f"{k}={_text(_first(d))}" for k, d in space.items()]
        cfg = self.hydra_context.config_loader.load_sweep_config(self.config, [*fixed.values(), *point])
        with open_dict(cfg):  # as the launcher and Hydra's run_job make a job's config
            cfg.hydra.job.id, cfg.hydra.job.num = "check", 0
            cfg.hydra.runtime.output_dir = str(Path(cfg.hydra.sweep.dir) / str(cfg.hydra.sweep.subdir))
        outer = HydraConfig.instance().cfg
        HydraConfig.instance().set_config(cfg)  # ${hydra:...} as a job sees it
        task = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
        try:
            resolve(task)
        except TransferlabError as e:
            at = f" (a trial's config at {' '.join(point)})" if point else ""
            raise SweepError(f"error: {e}{at}") from None
        finally:
            HydraConfig.instance().cfg = outer

    def _check(self) -> None:
        if self.direction not in ("maximize", "minimize"):
            raise SweepError(f"error: hydra.sweeper.direction={self.direction} is not valid; use maximize or minimize")
        for key in ("n_trials", "n_jobs", "heartbeat_interval"):
            if getattr(self, key) < 1:
                raise SweepError(f"error: hydra.sweeper.{key}={getattr(self, key)} must be at least 1")
        if self.max_retry < 0:
            raise SweepError(f"error: hydra.sweeper.max_retry={self.max_retry} must be 0 or more")
        if self.grace_period is not None and self.grace_period <= self.heartbeat_interval:
            raise SweepError(f"error: hydra.sweeper.grace_period={self.grace_period} must be longer than "
                             f"hydra.sweeper.heartbeat_interval={self.heartbeat_interval}, or every running trial "
                             f"would look lost between two heartbeats (null: twice the interval)")

    def _search(self, study, storage, space: dict, fixed: dict, url: str) -> None:
        """Until ``n_trials`` are done in the whole study: ask what is left (less what other workers are
        running), launch, tell. A trial whose worker died (no heartbeat for ``grace_period``) is marked
        FAIL without an error and does not count; its parameters are queued to run again (``max_retry``).
        Workers take stock and ask one at a time (``studies.exclusive``): none asks past ``n_trials``, and a
        lost trial's retry is queued before any other worker asks."""
        import optuna

        from transferlab import studies

        first, waiting = True, None
        sweep_dir = Path(self.config.hydra.sweep.dir)
        while True:
            asked, stop = [], None
            try:  # every trial asked is told, whatever fails before its job ends (else RUNNING forever)
                with studies.exclusive(url):
                    with _quiet():
                        optuna.storages.fail_stale_trials(study)
                    trials = study.get_trials(deepcopy=False)
                    done = [t for t in trials if studies.counted(t)]
                    failed = sum(t.state == optuna.trial.TrialState.FAIL for t in done)
                    if len(done) >= self.n_trials:
                        return
                    if done and failed / len(done) > self.max_failure_rate:
                        stop = (f"{failed} of {len(done)} trials failed, more than hydra.sweeper.max_failure_rate="
                                f"{self.max_failure_rate}")
                    running = [t.number for t in trials if t.state == optuna.trial.TrialState.RUNNING]
                    batch = min(self.n_jobs, self.n_trials - len(done) - len(running))
                    grid_left = _grid_left(study.sampler, study)
                    if grid_left is not None:
                        if grid_left == 0 and (not running or study.sampler.is_exhausted(study)):
                            log.warning("the grid has %d points, all tried: the search ends at %d of "
                                        "hydra.sweeper.n_trials=%d", len(study.sampler._all_grids), len(done),
                                        self.n_trials)
                            return
                        batch = min(batch, grid_left)
                    with _quiet():
                        for _ in range(0 if stop else batch):
                            asked.append(study.ask())
                            try:  # found lost (and failed) if this process dies before its job starts
                                storage.record_heartbeat(asked[-1]._trial_id)
                            except Exception as e:  # noqa: BLE001 - a busy database: the job's heartbeats follow
                                log.debug("heartbeat of trial %d not recorded: %s", asked[-1].number, e)
                    asked = self._within_budget(study, asked)
                if stop:  # (the report is written outside the lock: other workers go on asking meanwhile)
                    self._summarise(study, url, sweep_dir, stop=stop)
                if batch < 1:  # the rest is running elsewhere: wait for it to end or to be found lost
                    if waiting != running:
                        log.warning("waiting for trial(s) %s of study '%s', running elsewhere (a trial whose worker "
                                    "died counts as lost after hydra.sweeper.grace_period without a heartbeat)",
                                    ", ".join(map(str, running)), study.study_name)
                        waiting = running
                    time.sleep(self.heartbeat_interval)
                    continue
                waiting = None
                if not asked:
                    continue
                if first and asked[0].number > 0 and not isinstance(study.sampler, optuna.samplers.GridSampler):
                    study.sampler.reseed_rng()  # a resumed or shared study: never re-propose the seed's first trials
                first = False
                overrides = [self._overrides(t, space, fixed, url) for t in asked]
                with _heartbeat(storage, asked, self.heartbeat_interval):
                    returns = self._launch(asked, overrides)
                missing = [self._tell(study, trial, ret) for trial, ret in zip(asked, returns)]
            except BaseException:  # interrupted or refused: these trials did not run to an end and do not count
                for trial in asked:
                    try:
                        study.tell(trial, state=optuna.trial.TrialState.FAIL, skip_if_finished=True)
                    except Exception as e:  # noqa: BLE001 - the first error is the one to show
                        log.warning("trial %d could not be marked failed: %s", trial.number, e)
                raise
            missing = next((m for m in missing if m), None)
            if missing:  # every other trial would train in vain
                self._summarise(study, url, sweep_dir, stop=missing, exit_code=2)  # the objective is the user's

    def _within_budget(self, study, asked: list) -> list:
        """Sweepers that ask at the same moment (on a database ``studies.exclusive`` cannot lock) could
        overshoot ``n_trials``: the lowest-numbered trials keep the budget (every sweeper sees the same
        numbers); the others end unrun, as FAIL without an error, which does not count."""
        import optuna

        from transferlab import studies

        running = optuna.trial.TrialState.RUNNING
        live = sorted(t.number for t in study.get_trials(deepcopy=False) if studies.counted(t) or t.state == running)
        kept = set(live[:self.n_trials])
        for trial in asked:
            if trial.number not in kept:
                study.tell(trial, state=optuna.trial.TrialState.FAIL, skip_if_finished=True)
        return [t for t in asked if t.number in kept]

    def _overrides(self, trial, space: dict, fixed: dict, url: str) -> list[str]:
        """The trial's overrides. Its storage is written masked (its config is saved and shown): the
        trial opens the real URL through ``studies.real_url``."""
        from transferlab import studies

        for name, distribution in space.items():
            try:
                trial._suggest(name, distribution)  # what Study.ask(fixed_distributions=...) does
            except ValueError as e:  # another sweeper on the study searched the key another way
                raise SweepError(f"error: {_clashes(trial.study, {name: distribution}) or e}") from None
        spec = (f"{{storage:{_quoted(studies.shown(url))},study:{_quoted(trial.study.study_name)},"
                f"number:{trial.number}}}")
        return [*fixed.values(), *(f"{k}={_text(v)}" for k, v in trial.params.items()), f"optuna_trial={spec}"]

    def _launch(self, trials, overrides) -> list:
        """Job number = trial number (the job's sweep sub-folder): unique even when sweepers share a
        directory; trials numbered apart (another sweeper asked in between) go in separate launches."""
        returns, start = [], 0
        for i in range(1, len(trials) + 1):
            if i == len(trials) or trials[i].number != trials[i - 1].number + 1:
                returns += self.launcher.launch(overrides[start:i], initial_job_idx=trials[start].number)
                start = i
        return returns

    def _tell(self, study, trial, ret) -> str | None:
        """Tell the study how the trial's job ended; returns why the search must stop, if it must."""
        import optuna

        from transferlab import studies

        value = ret._return_value  # (``return_value`` re-raises a failed job's exception)
        if study._storage.get_trial(trial._trial_id).state.is_finished():
            log.warning("trial %d was marked lost while it ran (no heartbeat for hydra.sweeper.grace_period): its "
                        "result is not counted; its parameters run again up to hydra.sweeper.max_retry=%d times",
                        trial.number, self.max_retry)
            return None
        if ret.status == JobStatus.FAILED and isinstance(value, optuna.TrialPruned):
            study.tell(trial, state=optuna.trial.TrialState.PRUNED, skip_if_finished=True)
            log.info("trial %d %s", trial.number, value)
            return None
        if ret.status == JobStatus.FAILED and isinstance(value, studies.MissingObjective):
            reason = f"trial {trial.number}: {value}"
            trial.set_user_attr(studies.ERROR, reason[:1000])
            study.tell(trial, state=optuna.trial.TrialState.FAIL, skip_if_finished=True)
            return reason
        try:
            number = float(value) if ret.status == JobStatus.COMPLETED and value is not None else math.nan
        except (TypeError, ValueError):
            number = math.nan
        if math.isfinite(number):
            study.tell(trial, number, skip_if_finished=True)
            log.info("trial %d: %s", trial.number, number)
            return None
        reason = (f"{type(value).__name__}: {value}" if ret.status == JobStatus.FAILED else
                  _failure(ret) or f"the job returned {value!r}, not a number")
        trial.set_user_attr(studies.ERROR, reason[:1000])
        study.tell(trial, state=optuna.trial.TrialState.FAIL, skip_if_finished=True)
        log.warning("trial %d failed: %s", trial.number, reason)
        return None

    def _summarise(self, study, url: str, sweep_dir: Path, stop: str | None = None, exit_code: int = 1) -> None:
        """``optimization_results.yaml`` and the history plot, for the report. Without a complete trial
        (or past ``max_failure_rate``) the report is written all the same, then the search ends in error."""
        import optuna

        from transferlab import studies
        from transferlab.runs import write_atomic

        trials = study.get_trials(deepcopy=False)
        states = optuna.trial.TrialState
        count = {name: sum(t.state == s and studies.counted(t) for t in trials)
                 for name, s in (("complete", states.COMPLETE), ("pruned", states.PRUNED), ("failed", states.FAIL))}
        count["lost"] = sum(map(studies.lost, trials))
        results = {"name": "optuna", "study_name": study.study_name, "storage": studies.shown(url),
                   "direction": self.direction, "objective": OmegaConf.select(self.config, "objective"),
                   "trials": count}
        if count["complete"]:
            best = study.best_trial
            results.update(best_trial=best.number, best_value=best.value, best_params=best.params,
                           importances=_importances(study, count["complete"]))
            _plot_history(study, sweep_dir / HISTORY)
        write_atomic(sweep_dir / RESULTS, OmegaConf.to_yaml(OmegaConf.create(results)))  # workers of one sweep dir
        if count["complete"]:
            log.info("best %s = %s (trial %d): %s", results["objective"], results["best_value"],
                     results["best_trial"], results["best_params"])
        stop = stop or (None if count["complete"] else f"no trial completed ({count['failed']} failed, "
                                                       f"{count['pruned']} pruned)")
        if stop:
            self.hydra_context.callbacks.on_multirun_end(config=self.config)  # the report lists the failures
            raise SweepError(f"error: Optuna study '{study.study_name}' stopped: {stop}; the report in "
                             f"{sweep_dir} lists each failure and its reason", exit_code)


def _failure(ret) -> str | None:
    """A tl-train job that failed returns nothing and leaves failed.json with the reason."""
    from transferlab import runs

    try:
        run = runs.read_run(Path(ret.hydra_cfg.hydra.runtime.output_dir))  # the job's directory
        return run.error if run.status == "failed" else None
    except Exception:  # noqa: BLE001 - no reason recorded: the caller says what the job returned
        return None


def _importances(study, n_complete: int) -> dict | str:
    """fANOVA importances of the parameters, or why there are none."""
    import optuna

    if n_complete < 2:
        return "needs at least 2 complete trials"
    try:
        return {k: round(float(v), 4) for k, v in optuna.importance.get_param_importances(study).items()}
    except (RuntimeError, ValueError) as e:
        return f"not computed: {e}"


def _plot_history(study, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization.matplotlib import plot_optimization_history

    with _quiet():
        ax = plot_optimization_history(study)
    part = path.with_name(f".{path.name}.{os.getpid()}.part")  # workers sharing the sweep dir: never half a file
    ax.figure.savefig(part, format="png", dpi=120, bbox_inches="tight")
    plt.close(ax.figure)
    os.replace(part, path)
