"""The Hydra callbacks of every command (``conf/hydra/default.yaml``): the run-directory guard, the
report after a sweep, and the sweep's console lines. They sit on the top floor with the commands: they
start acts (fusion, report) and never reach below what those offer.
"""
from __future__ import annotations

import itertools
import logging
import time
from collections import Counter
from pathlib import Path

from hydra.core.utils import JobStatus
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict

from transferlab import console, redact, runs
from transferlab.cli import user_errors
from transferlab.errors import ConfigError, TransferlabError

log = logging.getLogger(__name__)

# What `resume=` may be given besides: where outputs go and how the console looks, not what runs.
RESUME_MAY_CHANGE = ("resume", "paths.output_dir", "trainer.enable_progress_bar", "verbose")


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def _save_scrubbed(node, name: str, folder: Path) -> None:
    plain = OmegaConf.to_container(node, resolve=False) if OmegaConf.is_config(node) else node
    folder.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(OmegaConf.create(redact.scrub(plain)), folder / name)


def _folder(config: DictConfig, mode: str) -> str:
    """hydra.run.dir / hydra.sweep.dir, or an error naming the value when it holds an interpolation that
    resolves to nothing (``${x}`` typed into a folder name)."""
    from omegaconf.errors import InterpolationResolutionError

    try:
        return str(config.hydra[mode].dir)
    except InterpolationResolutionError as e:
        raw = OmegaConf.to_container(config.hydra[mode], resolve=False)["dir"]
        raise ConfigError(f"hydra.{mode}.dir={raw} cannot be resolved ({str(e).splitlines()[0]}); write "
                          f"\\${{ for a literal '${{' or choose a folder name without it") from None


class RunDirectory(Callback):
    """Guards a run's directory before Hydra writes into it (Hydra creates it and opens its log before
    any job code runs), and writes Hydra's record without secrets: a single run claims its folder (or
    refuses one that holds a run), a sweep refuses a folder holding runs of another sweep."""

    def __init__(self, record: str = runs.RECORD):
        self.record = record  # folder of Hydra's record (config.yaml, hydra.yaml, overrides.yaml) in each run

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        """Hydra turns a callback's exception into a warning and goes on; a refusal here exits instead."""
        runs.forget_claims()
        with user_errors():
            if not console.rank_zero():  # Lightning's DDP ranks re-run the command into rank 0's directory
                return
            resume = OmegaConf.select(config, "resume", default=None)
            if resume:
                runs.RunDir(resume).read_config()  # not a run, or a config that names code: say so first
                extra = [o for o in config.hydra.overrides.task if _key(o) not in RESUME_MAY_CHANGE]
                if extra:
                    them = "it" if len(extra) == 1 else "them"
                    raise ConfigError(f"resume={resume} continues the run with its own saved config, so "
                                      f"{' '.join(extra)} would not apply; resume without {them}, or start a "
                                      f"new run with {them}")
                return
            runs.claim(_folder(config, "run"))

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        runs.forget_claims()
        with user_errors():
            if console.rank_zero():
                runs.check_sweep(_folder(config, "sweep"), _same_study(config))

    def on_job_start(self, config: DictConfig, **kwargs) -> None:
        redact.remember(list(config.hydra.overrides.task))  # before anything of this job is written
        if OmegaConf.select(config, "resume", default=None) or not console.rank_zero():
            return
        output = Path(config.hydra.runtime.output_dir)
        if config.hydra.mode == RunMode.MULTIRUN:
            with user_errors():
                runs.adopt(output)
        folder = output / self.record
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


def _same_study(config: DictConfig):
    """For an Optuna search: runs of the study it continues belong to it (their trial numbers are its)."""
    sweeper = OmegaConf.select(config, "hydra.sweeper", default=None)
    if sweeper is None or not str(sweeper.get("_target_", "")).endswith("OptunaSweeper"):
        return None
    study = sweeper.get("study_name") or Path(str(config.hydra.sweep.dir)).name
    return lambda run: (run.setting("optuna_trial.study") == study)


class ReportCallback(Callback):
    def __init__(self, select_by: str | None = None, fusions: list | None = None):
        """``select_by``: a validation metric; the report then ranks each setting at its best tuned values.
        ``fusions``: run after the sweep's jobs, before the report (``fuse_sweep``)."""
        self.select_by, self.fusions = select_by, list(fusions or [])

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        """One sweep, one name: ``experiment_name`` defaults to ``<data>_<strategy>``, which would split a
        sweep over strategies into several folders and W&B groups. Pin it for every job of the sweep
        unless the user named it."""
        from hydra.core.override_parser.overrides_parser import OverridesParser

        parsed = OverridesParser.create().parse_overrides(list(config.hydra.overrides.task))
        keys = [o.key_or_group for o in parsed]
        swept = [o.key_or_group.split(".")[0] for o in parsed if o.is_sweep_override()]
        if "experiment_name" in keys or not {"data", "strategy"} & set(swept) or "data" not in config:
            return
        name = f"{config.data.label}_sweep"
        with open_dict(config):
            config.hydra.overrides.task.append(f"experiment_name={name}")
            config.experiment_name = name

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        if not console.rank_zero():  # a DDP sweep re-runs the sweep in every rank; rank 0 reports
            return
        from transferlab.reports import log_to_wandb, wanted_wandb, write_report

        sweep_dir = Path(config.hydra.sweep.dir)
        if self.fusions:
            fuse_sweep(sweep_dir, self.fusions, config)
        try:
            report = write_report([sweep_dir], select_by=self.select_by)
        except TransferlabError as e:  # e.g. every job died before writing anything
            log.warning("no report for %s: %s", sweep_dir, e)
            return
        print(f"\n{report.markdown}\nreport of {len(report.runs)} runs: " + ", ".join(str(p) for p in report.paths))
        if report.rows and wanted_wandb(config):
            try:
                log_to_wandb(report, config)
            except Exception as e:  # noqa: BLE001 - the files are written; W&B trouble must not fail the sweep
                log.warning("the report was not logged to W&B: %s", e)


def fuse_sweep(sweep_dir: Path, fusions: list, config: DictConfig) -> None:
    """The sweep's fusions, each into ``<sweep>/fuse/<method>[_s<seed>]`` (rows of the same report).

    A fusion is ``{method: wise_ft, between: [STRATEGY_0, STRATEGY_1]}`` (θ_0 and θ_1 of each seed) or
    ``{method: greedy_soup | uniform_soup | ensemble, where: {strategy.label: ...}}`` (one over the
    sweep). A fusion that cannot run is a warning: the strategies' report still gets written."""
    from transferlab.config import compose_config, set_value
    from transferlab.fusion.act import fuse
    from transferlab.reports import wanted_wandb

    found = [r for r in runs.find_runs([sweep_dir]) if r.status == "finished" and "strategy" in r.config]
    for spec in fusions:
        spec = OmegaConf.to_container(spec) if isinstance(spec, DictConfig) else dict(spec)
        jobs = []  # (output name, settings)
        if spec.get("between"):
            for seed in sorted({r.setting("seed") for r in found}):
                ends = [[r for r in found if r.setting("strategy.label") == s and r.setting("seed") == seed]
                        for s in spec["between"]]
                if all(len(e) == 1 for e in ends):
                    jobs.append((f"{spec['method']}_s{seed}", {"runs": [str(e[0].dir) for e in ends]}))
                else:
                    log.warning("%s for seed %s skipped: needs exactly one finished run of each of %s, found %s",
                                spec["method"], seed, spec["between"], [len(e) for e in ends])
        else:
            jobs.append((spec["method"], {"sweep": str(sweep_dir), "where": spec.get("where") or {}}))
        for name, settings in jobs:
            out = sweep_dir / "fuse" / name
            if runs.RunDir(out).finished():
                continue  # fused already (a sweep re-reported): keep it
            cfg = compose_config([f"fusion={spec['method']}"], config_name="fuse")
            for key, value in {**settings, "paths.run_dir": str(out), "experiment_name": config.experiment_name,
                               **{f"fusion.{k}": v for k, v in spec.items() if k not in ("method", "between", "where")}
                               }.items():
                set_value(cfg, key, value)
            if not wanted_wandb(config):
                set_value(cfg, "logger.wandb", None)
            try:
                runs.forget_claims()
                fuse(cfg)
            except Exception as e:  # noqa: BLE001 - the strategies' report must still be written
                log.warning("fusion %s failed: %s", name, e)


class SweepLines(Callback):
    """One line per job of a sweep, ``[4/15] strategy=linear_probe seed=2  test/acc=0.7860 ... (4.5 s,
    about 1.2 min left)``, after a header naming the sweep directory."""

    def __init__(self):
        self.total, self.swept, self.start, self.done, self.job_start = None, None, None, 0, None
        self.clock = JobClock()

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        if not console.rank_zero():
            return
        self.total, self.swept, kinds = _sweep_shape(config)
        self.clock = JobClock(kinds)
        self.start = time.perf_counter()
        jobs = f"{self.total} jobs" if self.total else "jobs"
        console.show("sweep: %s into %s (each job's detail in <job dir>/%s.log)", jobs, config.hydra.sweep.dir,
                     config.hydra.job.name)

    def on_job_start(self, config: DictConfig, **kwargs) -> None:
        self.job_start = time.perf_counter()
        self.start = self.start or self.job_start

    def on_job_end(self, config: DictConfig, job_return, **kwargs) -> None:
        if config.hydra.mode != RunMode.MULTIRUN or not console.rank_zero():
            return
        seconds = time.perf_counter() - (self.job_start or time.perf_counter())
        self.done += 1
        run_dir = Path(str(OmegaConf.select(config, "paths.run_dir", default=config.hydra.runtime.output_dir)))
        overrides = [o for o in config.hydra.overrides.task if self.swept is None or _key(o) in self.swept]
        number = config.hydra.job.num + 1
        self.clock.finished(_kind(overrides), seconds)
        left = ""
        if self.total and self.done < self.total:
            seconds_left = self.clock.left()
            if seconds_left is None:  # a sweeper that decides as it goes: its jobs so far, on average
                seconds_left = (time.perf_counter() - self.start) / self.done * (self.total - self.done)
            left = f", about {console.duration(seconds_left)} left"
        console.show("[%s] %s  %s  (%s%s)", f"{number}/{self.total}" if self.total else number, " ".join(overrides),
                     _outcome(run_dir, job_return), console.duration(seconds), left)


def _outcome(run_dir: Path, job_return) -> str:
    """The headline metrics of a finished job, the error of a failed one, where a pruned trial stopped."""
    run = runs.read_run(run_dir)
    if run.status == "finished":
        return console.headline(run.metrics)
    if run.status == "pruned":
        return f"pruned by Optuna after epoch {run.metrics.get('epoch')}"
    if run.status in ("failed", "damaged"):
        return "failed: " + (str(run.error).splitlines() or [""])[0][:160]
    if job_return.status == JobStatus.FAILED:  # raised past tl-train's own handling: its traceback follows
        return f"failed: {job_return._return_value!r}"[:160]
    return "no metrics.json (stopped)"


# A sweep key that repeats a setting rather than making another kind of job: its jobs take alike long.
REPEATS = ("seed",)


def _kind(overrides) -> tuple[str, ...]:
    """What a job is, for timing: its overrides but the repeats, in one order."""
    return tuple(sorted(o.lstrip("+~") for o in overrides if _key(o) not in REPEATS))


class JobClock:
    """Time left in a sweep, from the kinds of jobs still to run: a multitask job that took a minute
    predicts the other multitask jobs, not the 5-second linear probes (``kinds``: every job's kind, as
    many times as it runs; None when the sweeper decides its jobs as it goes)."""

    def __init__(self, kinds: list[tuple[str, ...]] | None = None):
        self.pending = None if kinds is None else Counter(kinds)
        self.seconds: dict[tuple[str, ...], list[float]] = {}

    def finished(self, kind: tuple[str, ...], seconds: float) -> None:
        self.seconds.setdefault(kind, []).append(seconds)
        if self.pending and self.pending[kind] > 0:
            self.pending[kind] -= 1

    def left(self) -> float | None:
        """Each pending job at the mean of its kind, or of every job so far for a kind not yet seen."""
        if self.pending is None or not self.seconds:
            return None
        done = [s for times in self.seconds.values() for s in times]
        unseen = sum(done) / len(done)
        mean = {kind: sum(times) / len(times) for kind, times in self.seconds.items()}
        return sum(n * mean.get(kind, unseen) for kind, n in self.pending.items())


def _sweep_shape(config: DictConfig) -> tuple[int | None, set[str] | None, list[tuple[str, ...]] | None]:
    """How many jobs the sweep runs and the kind of each (None when its sweeper decides as it goes), and
    which keys it varies."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    sweeper = config.hydra.sweeper
    params = [f"{k}={v}" for k, v in (sweeper.get("params") or {}).items()]
    try:
        parsed = OverridesParser.create().parse_overrides(params + list(config.hydra.overrides.task))
    except Exception:  # noqa: BLE001 - a sweeper syntax of its own: show every override
        return sweeper.get("n_trials"), None, None
    last = {o.key_or_group: o for o in parsed}  # a key given again (the command line after params) wins
    swept = {key for key, o in last.items() if o.is_sweep_override()}
    if not str(sweeper.get("_target_", "")).endswith("BasicSweeper"):
        return sweeper.get("n_trials"), swept, None
    axes = [[f"{o.get_key_element()}={value}" for value in o.sweep_string_iterator()] for o in last.values()
            if o.is_discrete_sweep()]  # spelt as Hydra spells each job's overrides
    kinds = [_kind(job) for job in itertools.product(*axes)]
    return len(kinds), swept, kinds
