"""Reliability: crashes while writing results, untrusted files, secrets, long sweeps, W&B unavailable.

- A failure while ``metrics.json`` (or ``config.yaml``) is written never leaves a corrupt file where a
  good one was, nor a temporary file beside it (``transferlab.runs.write_json`` / ``write_yaml``).
- Untrusted files: a checkpoint that runs code when unpickled is refused by ``tl-train
  model.checkpoint=`` and ``tl-eval ckpt_path=``; a run directory or checkpoint whose saved config
  names a ``_target_`` outside the allowlist is refused by ``tl-reproduce``, ``tl-train resume=`` and
  ``tl-eval``; secrets from the environment end up in no file of a run directory.
- A 20-job sweep in one process ends with 20 W&B runs, 20 run directories and a report, without
  leaking file descriptors, memory or child processes.
- W&B online with no API key and no server: the run goes on, warns, and logs offline.

The untrusted-file cases run each console script's ``main()`` in this process (``helpers.cli``). The secret,
sweep and W&B tests start ``tl-train`` as a user would, because what they check belongs to the process: the
umask it was started with, the children and file descriptors it leaves, and W&B's set-up in a process whose
environment has no W&B variables. Each runs with one intra-op thread.
"""
from __future__ import annotations

import errno
import json
import os
import pathlib
import re
import secrets
import shutil
import stat
import time
from pathlib import Path

import pytest
import torch
import yaml
from helpers import FAST, FAST_SOURCE, ONE_THREAD, cli, process, train
from wandb_reader import find_wandb_file, metric, read_run

from transferlab import redact, runs

TESTS = Path(__file__).resolve().parent
# helpers.FAST without its source-run, logger and epoch settings (each test sets those): every run here
# has source=none, so no source model is trained.
NO_SOURCE = [o for o in FAST if o != FAST_SOURCE and not o.startswith(("logger=", "trainer.max_epochs="))]
NO_SOURCE.append("source=none")


def run_cli(command: str, *args, cwd: Path, env: dict | None = None, drop: tuple = (), timeout: int = 300,
            umask: int | None = None):
    """A console script as a user runs it (``helpers.process``), with one intra-op thread."""
    return process(command, *args, cwd=cwd, env={**ONE_THREAD, **(env or {})}, drop=drop, timeout=timeout, umask=umask)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """A real finished run (one epoch, CSV logs), trained in this process: same code path as tl-train."""
    run_dir = tmp_path_factory.mktemp("finished") / "run"
    train(run_dir, *NO_SOURCE, "logger=csv", "trainer.max_epochs=1", fast=False)
    return run_dir


# ---------------------------------------------------------------------------------------------------
# 2. A crash while writing metrics.json / config.yaml never leaves a corrupt file in place of a good one
# ---------------------------------------------------------------------------------------------------

GOOD = {"test/acc": 0.75, "strategy": "finetune", "seed": 1}


class Unprintable:
    """A value json.dumps(default=str) reaches after part of the output is encoded, and cannot render."""

    def __str__(self):
        raise RuntimeError("cannot render this value")


class HalfWriter:
    """A file whose write stores the first half of the text, then fails as a full disk does."""

    def __init__(self, f):
        self._f = f

    def write(self, text):
        self._f.write(text[: len(text) // 2])
        self._f.flush()
        raise OSError(errno.ENOSPC, "No space left on device")

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()


def _fault(monkeypatch, fault: str):
    """Arrange ``fault`` for the next write; returns (object to write, exception expected)."""
    if fault == "serialization_fails_midway":
        return {"a": 1, "b": [1, 2, 3], "zz": Unprintable()}, RuntimeError
    if fault == "disk_full_midway":
        real = os.fdopen
        monkeypatch.setattr(os, "fdopen", lambda *a, **k: HalfWriter(real(*a, **k)))
        return {**GOOD, "test/acc": 0.1, "padding": "x" * 100_000}, OSError
    if fault == "fsync_fails":
        monkeypatch.setattr(os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(errno.EIO, "I/O error")))
        return {**GOOD, "test/acc": 0.1}, OSError
    if fault == "rename_fails":
        monkeypatch.setattr(os, "replace", lambda *a: (_ for _ in ()).throw(PermissionError("read-only folder")))
        return {**GOOD, "test/acc": 0.1}, PermissionError
    if fault == "ctrl_c_during_fsync":
        monkeypatch.setattr(os, "fsync", lambda fd: (_ for _ in ()).throw(KeyboardInterrupt()))
        return {**GOOD, "test/acc": 0.1}, KeyboardInterrupt
    raise AssertionError(fault)


FAULTS = ["serialization_fails_midway", "disk_full_midway", "fsync_fails", "rename_fails", "ctrl_c_during_fsync"]


@pytest.mark.parametrize("fault", FAULTS)
def test_a_failed_metrics_write_keeps_the_old_file_and_leaves_no_temp_file(tmp_path, monkeypatch, fault):
    path = tmp_path / "metrics.json"
    runs.write_json(path, GOOD)
    good_bytes = path.read_bytes()
    obj, expected = _fault(monkeypatch, fault)
    with pytest.raises(expected):
        runs.write_json(path, obj)
    monkeypatch.undo()
    assert path.read_bytes() == good_bytes and json.loads(good_bytes) == GOOD
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]


@pytest.mark.parametrize("fault", ["serialization_fails_midway", "disk_full_midway", "rename_fails"])
def test_a_failed_config_write_keeps_the_old_config_yaml(tmp_path, monkeypatch, fault):
    path = tmp_path / "config.yaml"
    runs.write_yaml(path, {"seed": 1, "model": {"name": "test_resnet"}})
    good_bytes = path.read_bytes()
    obj, expected = _fault(monkeypatch, fault)
    if fault == "serialization_fails_midway":  # yaml.safe_dump refuses objects it cannot represent
        obj, expected = {"seed": 2, "model": {"name": object()}}, yaml.YAMLError
    with pytest.raises(expected):
        runs.write_yaml(path, obj)
    monkeypatch.undo()
    assert path.read_bytes() == good_bytes
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml"]


def test_the_temporary_file_is_renamed_within_the_same_folder(tmp_path, monkeypatch):
    """Atomic only when the rename stays on one file system: the temp file lives beside the target."""
    renames, real = [], os.replace
    monkeypatch.setattr(os, "replace", lambda src, dst: (renames.append((Path(src), Path(dst))), real(src, dst)))
    runs.write_json(tmp_path / "sub" / "metrics.json", GOOD)
    ((src, dst),) = renames
    assert src.parent == dst.parent == tmp_path / "sub" and dst.name == "metrics.json" and src.name != dst.name
    assert json.loads(dst.read_text()) == GOOD


def test_a_process_killed_mid_write_leaves_the_old_metrics_json(tmp_path):
    """A hard crash (no exception handler runs) during the write: metrics.json is still the old, good
    file; what may be left is a hidden ``.metrics.json.*.tmp``, which no reader takes for metrics.json."""
    path = tmp_path / "metrics.json"
    runs.write_json(path, GOOD)
    good_bytes = path.read_bytes()
    pid = os.fork()
    if pid == 0:  # child: die the way SIGKILL / an OOM kill does, after the data is written, before the rename
        try:
            os.fsync = lambda fd: os._exit(137)
            runs.write_json(path, {**GOOD, "test/acc": 0.1, "padding": "x" * 1_000_000})
        finally:
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 137
    assert path.read_bytes() == good_bytes
    others = [p.name for p in tmp_path.iterdir() if p.name != "metrics.json"]
    assert all(re.fullmatch(r"\.metrics\.json\..+\.tmp", name) for name in others), others
    runs.write_json(path, {**GOOD, "test/acc": 0.2})  # the next write still works
    assert json.loads(path.read_text())["test/acc"] == 0.2


# ---------------------------------------------------------------------------------------------------
# 3. Untrusted files
# ---------------------------------------------------------------------------------------------------


class Payload:
    """Unpickling this creates ``marker``: any code could run in its place."""

    def __init__(self, marker: Path):
        self.marker = Path(marker)

    def __reduce__(self):
        return pathlib.Path.touch, (self.marker,)


def plant_pickle(path: Path, marker: Path) -> Path:
    """A .ckpt that looks like a state dict but runs code (touches ``marker``) when unpickled."""
    torch.save({"state_dict": {"backbone.conv1.weight": torch.zeros(1)}, "epoch": 3, "extra": Payload(marker)}, path)
    return path


def edit_config(run_dir: Path, edit) -> None:
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    edit(config)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))


def snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in folder.rglob("*") if p.is_file() and p.name != "train.log"}


@pytest.fixture(scope="module")
def untrusted(finished_run, tmp_path_factory):
    """Plant every untrusted file, then run each command on it through its ``main()`` in this process (a
    planted payload that ran would leave its marker all the same).

    Returns ``{case: (result, marker, target dir or file, files before)}``; a marker exists only if the
    planted code ran.
    """
    root = tmp_path_factory.mktemp("untrusted")
    markers = root / "markers"
    markers.mkdir()
    cases = {}

    # the pickle payload is live: loaded without weights_only it does run
    probe = plant_pickle(root / "probe.ckpt", markers / "probe")
    torch.load(probe, map_location="cpu", weights_only=False)
    assert (markers / "probe").exists(), "the planted pickle should run code when fully unpickled"

    evil_train = plant_pickle(root / "evil_train.ckpt", markers / "train_checkpoint")
    cases["train_checkpoint"] = ("tl-train", [*NO_SOURCE, "logger=csv", "trainer.max_epochs=1",
                                              f"model.checkpoint={evil_train}"], evil_train)
    evil_eval = plant_pickle(root / "evil_eval.ckpt", markers / "eval_checkpoint")
    cases["eval_checkpoint"] = ("tl-eval", [f"ckpt_path={evil_eval}"], evil_eval)

    def os_system(marker):
        return {"_target_": "os.system", "_args_": [f"touch {marker}"]}

    def strategy_target(marker):
        return lambda c: c.__setitem__("strategy", os_system(marker))

    def logger_nested_target(marker):  # Hydra instantiates nested nodes first: this runs inside logger.csv
        return lambda c: c["logger"]["csv"].__setitem__("name", os_system(marker))

    for kind, edit in (("strategy", strategy_target), ("logger_nested", logger_nested_target)):
        for command in ("reproduce", "resume"):
            name = f"{command}_{kind}"
            run_dir = root / name
            shutil.copytree(finished_run, run_dir)
            edit_config(run_dir, edit(markers / name))
            if command == "resume":  # an interrupted run: last.ckpt but no metrics.json
                (run_dir / "metrics.json").unlink()
                cases[name] = ("tl-train", [f"resume={run_dir}"], run_dir)
            else:
                cases[name] = ("tl-reproduce", [str(run_dir)], run_dir)

    # a helper inside transferlab that writes a file of the config's choosing, and an interpolation
    def write_file(marker):
        return {"_target_": "transferlab.runs.write_atomic", "path": str(marker), "text": "echo pwned\n"}

    hostile = {"write_file": lambda m: (lambda c: c.__setitem__("strategy", write_file(m))),
               "interpolation": lambda m: (lambda c: c["data"].__setitem__("label", "${oc.env:HOME}"))}
    for kind, edit in hostile.items():
        for command in ("reproduce", "resume"):
            name = f"{command}_{kind}"
            run_dir = root / name
            shutil.copytree(finished_run, run_dir)
            edit_config(run_dir, edit(markers / name))
            if command == "resume":
                (run_dir / "metrics.json").unlink()
                cases[name] = ("tl-train", [f"resume={run_dir}"], run_dir)
            else:
                cases[name] = ("tl-reproduce", [str(run_dir), "--allow-version-change"], run_dir)

    # tl-train ckpt_path= and resume= load Lightning checkpoints: a planted pickle there must not run either
    evil_fit = plant_pickle(root / "evil_fit.ckpt", markers / "train_ckpt_path")
    cases["train_ckpt_path"] = ("tl-train", [*NO_SOURCE, "logger=csv", "trainer.max_epochs=1",
                                             f"ckpt_path={evil_fit}"], evil_fit)
    planted = root / "resume_planted_last"
    shutil.copytree(finished_run, planted)
    (planted / "metrics.json").unlink()
    plant_pickle(planted / "checkpoints" / "last.ckpt", markers / "resume_planted_last")
    cases["resume_planted_last"] = ("tl-train", [f"resume={planted}"], planted)

    # a checkpoint that passes weights_only (plain data) but whose saved config names os.system
    ckpt = torch.load(finished_run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    ckpt["hyper_parameters"]["config"]["strategy"] = os_system(markers / "eval_config")
    torch.save(ckpt, root / "eval_config.ckpt")
    cases["eval_config"] = ("tl-eval", [f"ckpt_path={root / 'eval_config.ckpt'}"], root / "eval_config.ckpt")

    # inside the allowlist: torch.load with weights_only=false unpickles the planted file
    bypass = root / "reproduce_allowlisted_loader"
    shutil.copytree(finished_run, bypass)
    evil_bypass = plant_pickle(root / "evil_bypass.ckpt", markers / "reproduce_allowlisted_loader")
    edit_config(bypass, lambda c: c.__setitem__(
        "strategy", {"_target_": "torch.load", "f": str(evil_bypass), "weights_only": False}))
    # (--allow-version-change: only the allowlist may stop it, even if HEAD moved since the fixture run)
    cases["reproduce_allowlisted_loader"] = ("tl-reproduce", [str(bypass), "--allow-version-change"], bypass)

    def run(name, command, args, target):
        cwd = root / f"cwd_{name}"
        cwd.mkdir()
        before = snapshot(target) if target.is_dir() else None
        extra = [f"paths.output_dir={cwd / 'outputs'}"] if command != "tl-reproduce" else []
        return cli(command, *args, *extra, cwd=cwd, env=ONE_THREAD), markers / name, target, before

    return {name: run(name, *case) for name, case in cases.items()}


def _refused(result, *says):
    summary = f"exit {result.returncode}\n{result.stderr[-2500:]}"
    assert result.returncode != 0, summary
    assert "error:" in result.stderr and "Traceback" not in result.stdout + result.stderr, summary
    for text in says:
        assert str(text) in result.stderr, summary


@pytest.mark.parametrize("case", ["train_checkpoint", "eval_checkpoint"])
def test_a_checkpoint_that_runs_code_when_unpickled_is_refused(untrusted, case):
    result, marker, ckpt, _ = untrusted[case]
    _refused(result, ckpt, "weights_only")
    assert not marker.exists(), f"the planted pickle ran during {case}"
    assert not list(ckpt.parent.glob(f"cwd_{case}/**/metrics.json"))


@pytest.mark.parametrize("case", ["reproduce_strategy", "resume_strategy", "reproduce_logger_nested",
                                  "resume_logger_nested"])
def test_a_run_whose_config_names_a_target_outside_the_allowlist_is_refused(untrusted, case):
    result, marker, run_dir, before = untrusted[case]
    _refused(result, "'os.system'", "not allowed", run_dir / "config.yaml")
    assert not marker.exists(), f"the planted _target_ ran during {case}"
    assert snapshot(run_dir) == before  # nothing trained: no checkpoint rewritten, no metrics.json written
    assert not list(run_dir.parent.glob(f"{run_dir.name}-reproduced-*"))
    assert not list(run_dir.parent.glob(f"cwd_{case}/**/metrics.json"))


def test_a_checkpoint_whose_saved_config_names_a_target_outside_the_allowlist_is_refused(untrusted):
    result, marker, ckpt, _ = untrusted["eval_config"]
    _refused(result, "'os.system'", "not allowed", ckpt)
    assert not marker.exists()


@pytest.mark.parametrize("case", ["reproduce_write_file", "resume_write_file"])
def test_a_saved_config_cannot_call_transferlab_helpers_either(untrusted, case):
    result, marker, run_dir, before = untrusted[case]
    _refused(result, "strategy._target_='transferlab.runs.write_atomic'", "not allowed", run_dir / "config.yaml")
    assert not marker.exists(), f"the saved config wrote a file during {case}"
    assert snapshot(run_dir) == before


@pytest.mark.parametrize("case", ["reproduce_interpolation", "resume_interpolation"])
def test_a_saved_config_with_an_interpolation_is_refused_naming_the_key(untrusted, case):
    result, _, run_dir, before = untrusted[case]
    _refused(result, "data.label='${oc.env:HOME}'", "interpolation", run_dir / "config.yaml")
    assert snapshot(run_dir) == before


@pytest.mark.parametrize("case", ["train_ckpt_path", "resume_planted_last"])
def test_ckpt_path_and_resume_load_tensors_only(untrusted, case):
    result, marker, target, _ = untrusted[case]
    _refused(result, "weights_only")
    assert not marker.exists(), f"the planted pickle ran during {case}"


def test_an_allowlisted_package_cannot_be_used_to_unpickle_a_planted_file(untrusted):
    result, marker, _, _ = untrusted["reproduce_allowlisted_loader"]
    assert not marker.exists(), "tl-reproduce ran code from a pickle named by the saved config's strategy._target_"
    _refused(result, "torch.load")


@pytest.fixture(scope="module")
def secret_run(tmp_path_factory):
    """A real tl-train run (csv + W&B offline) with two secrets in its environment, one interpolated
    into the config (``+notes=${oc.env:MY_SERVICE_TOKEN}``: the literal text, no shell involved), and
    one passed as an override (``+db.password=...``); started under umask 027."""
    cwd = tmp_path_factory.mktemp("secrets")
    values = {"WANDB_API_KEY": "wk" + secrets.token_hex(20), "MY_SERVICE_TOKEN": "st" + secrets.token_hex(16)}
    password = "pw" + secrets.token_hex(12)
    result = run_cli("tl-train", *NO_SOURCE, "logger=many", "trainer.max_epochs=1", "+notes=${oc.env:MY_SERVICE_TOKEN}",
                     f"+db.password={password}", f"paths.output_dir={cwd / 'outputs'}", cwd=cwd, env=values,
                     umask=0o027)
    values["override db.password"] = password
    assert result.returncode == 0, result.stderr[-3000:]
    (metrics,) = (cwd / "outputs").rglob("metrics.json")
    return metrics.parent, values, result


def leaks(run_dir: Path, values: dict, skip=lambda p: False) -> dict:
    """{file relative to run_dir: [names of the secrets its bytes contain]} over every file under run_dir."""
    found = {}
    for path in sorted(run_dir.rglob("*")):
        if path.is_file() and not skip(path):
            data = path.read_bytes()
            names = [name for name, value in values.items() if value.encode() in data]
            if names:
                found[str(path.relative_to(run_dir))] = names
    return found


def test_the_secret_reached_the_run_config_and_was_redacted(secret_run):
    run_dir, _, _ = secret_run
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["notes"] == redact.REDACTED
    assert (run_dir / "metrics.json").is_file() and find_wandb_file(run_dir).is_file()


def test_no_run_file_but_checkpoints_holds_a_secret(secret_run):
    run_dir, values, result = secret_run
    assert len(list(run_dir.rglob("*"))) > 15  # .hydra, csv, wandb's offline run, checkpoints, ...
    assert leaks(run_dir, values, skip=lambda p: p.suffix == ".ckpt") == {}
    for name, value in values.items():
        assert value not in result.stdout + result.stderr, f"{name} printed by tl-train"


def test_checkpoints_hold_no_secret(secret_run):
    run_dir, values, _ = secret_run
    assert leaks(run_dir, values, skip=lambda p: p.suffix != ".ckpt") == {}


def test_an_override_secret_is_redacted_in_hydras_record_and_env_json(secret_run):
    run_dir, _, _ = secret_run
    assert "+db.password=<redacted>" in yaml.safe_load((run_dir / ".hydra" / "overrides.yaml").read_text())
    assert "+db.password=<redacted>" in json.loads((run_dir / "env.json").read_text())["argv"]
    assert yaml.safe_load((run_dir / ".hydra" / "config.yaml").read_text())["db"]["password"] == redact.REDACTED


def test_run_files_follow_the_umask(secret_run):
    run_dir, _, _ = secret_run
    for name in ("metrics.json", "config.yaml", "env.json"):
        assert stat.S_IMODE((run_dir / name).stat().st_mode) == 0o640, name  # 0o666 & ~0o027


# ---------------------------------------------------------------------------------------------------
# 4. A long sweep in one process stays healthy
# ---------------------------------------------------------------------------------------------------

SWEEP_JOBS = 20
FD_GROWTH = 10            # open file descriptors, end vs after job 1 (measured: 11 and 11)
RSS_GROWTH_MB = 250       # resident memory, end vs after job 1 (measured: +79 MB, 959 -> 1038 MB)


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


@pytest.mark.slow
def test_a_20_job_sweep_leaves_20_runs_a_report_and_no_leaks(tmp_path):
    probe = tmp_path / "probe.jsonl"
    python_path = os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")]))
    result = run_cli("tl-train", "-m", f"seed=range(0,{SWEEP_JOBS})", *NO_SOURCE, "logger=many",
                     "trainer.max_epochs=1", f"paths.output_dir={tmp_path / 'out'}",
                     "+hydra.callbacks.probe._target_=probe_callback.Probe", cwd=tmp_path, timeout=600,
                     env={"PYTHONPATH": python_path, "TL_PROBE_FILE": str(probe)})
    assert result.returncode == 0, result.stderr[-3000:]
    records = [json.loads(line) for line in probe.read_text().splitlines()]

    # no child process (wandb-core, data workers) outlives the sweep (a few seconds to notice is fine)
    children = {c["pid"]: c["cmd"] for r in records for c in r["children"]}
    deadline = time.monotonic() + 15
    while any(alive(pid) for pid in children) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not [(pid, cmd) for pid, cmd in children.items() if alive(pid)], "left behind after the sweep exited"

    (sweep_dir,) = (tmp_path / "out" / "multirun").glob("*/*")
    jobs = sorted((p for p in sweep_dir.iterdir() if (p / ".hydra").is_dir()), key=lambda p: int(p.name))
    assert [p.name for p in jobs] == [str(i) for i in range(SWEEP_JOBS)]
    assert all(json.loads((job / "metrics.json").read_text())["seed"] == i for i, job in enumerate(jobs))
    runs = [read_run(job) for job in jobs]
    assert all(r["exited"] and r["exit_code"] == 0 for r in runs)
    assert len({r["run"]["id"] for r in runs}) == SWEEP_JOBS
    assert [r["run"]["name"].rsplit("-s", 1)[1] for r in runs] == [str(i) for i in range(SWEEP_JOBS)]
    assert all(metric(r["history"], "val/acc") for r in runs)
    assert f"{SWEEP_JOBS} finished, 0 failed" in (sweep_dir / "report.md").read_text()

    # resources, measured by the probe after every job
    assert [r["job"] for r in records] == list(range(SWEEP_JOBS))
    first, last = records[0], records[-1]
    growth_mb = (last["rss_kb"] - first["rss_kb"]) / 1024
    print(f"\nsweep of {SWEEP_JOBS} jobs: fds {first['fds']} -> {last['fds']}, RSS {first['rss_kb'] // 1024} -> "
          f"{last['rss_kb'] // 1024} MB ({growth_mb:+.0f} MB), threads {first['threads']} -> {last['threads']}, "
          f"children {len(first['children'])} -> {len(last['children'])}: {sorted(set(children.values()))}")
    assert last["fds"] <= first["fds"] + FD_GROWTH, [r["fds"] for r in records]
    assert growth_mb <= RSS_GROWTH_MB, [r["rss_kb"] // 1024 for r in records]
    assert max(len(r["children"]) for r in records) <= len(first["children"]) + 1, [r["children"] for r in records]


# ---------------------------------------------------------------------------------------------------
# 5. W&B unavailable: online mode with no API key and no server
# ---------------------------------------------------------------------------------------------------


def test_wandb_online_without_key_or_server_warns_and_logs_offline(tmp_path):
    home = tmp_path / "home"  # no ~/.netrc, no ~/.config/wandb: no stored key either
    home.mkdir()
    result = run_cli("tl-train", *NO_SOURCE, "logger=many", "trainer.max_epochs=2",
                     f"paths.output_dir={tmp_path / 'out'}", cwd=tmp_path,
                     env={"WANDB_MODE": "online", "HOME": str(home), "WANDB_BASE_URL": "http://127.0.0.1:9"},
                     drop=("WANDB_API_KEY", "WANDB_ENTITY", "NETRC"))
    assert result.returncode == 0, result.stderr[-3000:]
    output = result.stdout + result.stderr
    warning = next((line for line in output.splitlines() if "W&B" in line and "offline" in line), None)
    assert warning and "WARNING" in warning, output[-3000:]
    assert "Traceback" not in output
    (run_dir,) = [p.parent for p in (tmp_path / "out").rglob("metrics.json")]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    csv_rows = (run_dir / "csv" / "metrics.csv").read_text().splitlines()
    header = csv_rows[0].split(",")
    csv_val_acc = [float(row.split(",")[header.index("val/acc")]) for row in csv_rows[1:]
                   if row.split(",")[header.index("val/acc")]]
    run = read_run(run_dir)
    assert run["exited"] and run["exit_code"] == 0
    assert run["run"]["name"] == f"finetune-test_resnet-{metrics['data']}-s42"
    assert metric(run["history"], "val/acc") == pytest.approx(csv_val_acc) and len(csv_val_acc) == 2
    assert run["summary"]["test/acc"] == pytest.approx(metrics["test/acc"])
    assert run["config"]["seed"] == 42
