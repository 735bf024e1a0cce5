"""Optuna sweeper reliability: every asked trial is told, one study keeps one objective and one kind of
distribution per key, a grid smaller than ``n_trials`` ends cleanly, a storage that cannot be created or
a missing objective ends in one ``error:`` line, and a storage URL's password is never shown or written.

Most searches run in this process, through ``tl-train``'s own entry point (Hydra, the sweeper, the basic
launcher, each trial a real tiny training run) on real SQLite studies in ``tmp_path``: the process is
not what these tests are about, and in-process trials spare each search the start of a Python with torch.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml
from helpers import ONE_THREAD, process

# One epoch on 10 images per class, no source run, CSV only: a trial takes a second or two.
TINY = ["hparams_search=optuna", "source=none", "logger=csv", "trainer.max_epochs=1",
        "trainer.enable_progress_bar=false", "data.train_per_class=10", "hydra.sweeper.n_jobs=1"]


@pytest.fixture(autouse=True)
def _clean(monkeypatch, tmp_path, one_torch_thread):
    """Each search starts from a fresh Hydra, in ``tmp_path``, without a storage URL an earlier one passed.
    Optuna's own log handler keeps the stream it was made with, which may be an earlier test's capture
    (closed since): it writes to the real stderr here, which ``capfd`` reads."""
    import logging

    import optuna

    optuna.logging.get_verbosity()  # (makes Optuna's handler if no search did yet)
    for handler in logging.getLogger("optuna").handlers:
        if type(handler) is logging.StreamHandler:  # (not pytest's own capture handlers)
            monkeypatch.setattr(handler, "stream", sys.__stderr__)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(STORAGE_ENV, "")
    monkeypatch.delenv(STORAGE_ENV)  # (restored to unset afterwards, whatever a search sets)
    yield


STORAGE_ENV = "TRANSFERLAB_OPTUNA_STORAGE"  # transferlab.studies.STORAGE_ENV: how trials get a masked storage


def search(tmp_path: Path, *overrides, name: str = "s") -> int:
    """``tl-train hparams_search=optuna ...`` in this process: its exit status (0 when it returns)."""
    from hydra.core.global_hydra import GlobalHydra

    from transferlab.cli import train

    argv = sys.argv
    sys.argv = ["tl-train", *TINY, f"paths.output_dir={tmp_path}", f"hydra.sweep.dir={tmp_path / name}", *overrides]
    GlobalHydra.instance().clear()
    try:
        train.main()
        return 0
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else 1
    finally:
        sys.argv = argv
        GlobalHydra.instance().clear()


def trials(url: str, study: str) -> list:
    import optuna

    from transferlab.studies import open_storage

    return optuna.load_study(study_name=study, storage=open_storage(url)).get_trials(deepcopy=False)


def states(url: str, study: str) -> list[str]:
    return [t.state.name for t in trials(url, study)]


def errors(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln.startswith("error: ")]


def shared(tmp_path: Path, study: str = "shared") -> tuple[str, list[str]]:
    url = f"sqlite:///{tmp_path / 'study.db'}"
    return url, [f"hydra.sweeper.storage={url}", f"hydra.sweeper.study_name={study}"]


# ---------------------------------------------------------------------------------------------------
# M1: a trial asked and never launched is told FAIL, and a later search does not wait for it
# ---------------------------------------------------------------------------------------------------

def test_a_trial_whose_overrides_fail_to_build_is_told_failed_and_the_next_search_runs(tmp_path, monkeypatch, capfd):
    import optuna

    url, storage = shared(tmp_path)

    def broken(self, name, distribution):
        raise RuntimeError("suggest broke")

    with monkeypatch.context() as m:
        m.setattr(optuna.trial.Trial, "_suggest", broken)  # fails between study.ask and the launch
        assert search(tmp_path, "hydra.sweeper.n_trials=2", *storage, name="a") != 0
    assert "suggest broke" in capfd.readouterr().err
    assert states(url, "shared") == ["FAIL"]  # not RUNNING: nothing would ever end it
    assert "error" not in trials(url, "shared")[0].user_attrs  # lost, not counted: it never ran
    # the same study again: the unlaunched trial does not count, and nothing waits for it
    assert search(tmp_path, "hydra.sweeper.n_trials=1", "hydra.sweeper.heartbeat_interval=1", *storage, name="b") == 0
    assert sorted(states(url, "shared")) == ["COMPLETE", "FAIL"]


# ---------------------------------------------------------------------------------------------------
# M2: one study, one objective; never a test metric
# ---------------------------------------------------------------------------------------------------

def test_a_study_refuses_a_search_for_another_objective(tmp_path, capfd):
    url, storage = shared(tmp_path)
    assert search(tmp_path, "hydra.sweeper.n_trials=1", *storage, name="a") == 0
    assert trials(url, "shared")[0].state.name == "COMPLETE"
    import optuna

    assert optuna.load_study(study_name="shared", storage=url).user_attrs["objective"] == "val/acc_best"
    capfd.readouterr()
    assert search(tmp_path, "hydra.sweeper.n_trials=2", "objective=val/loss", *storage, name="b") == 2
    err = capfd.readouterr().err
    (line,) = errors(err)
    assert "objective=val/acc_best" in line and "objective=val/loss" in line and "'shared'" in line, line
    assert "Traceback" not in err
    assert states(url, "shared") == ["COMPLETE"]  # nothing asked, nothing trained
    assert not (tmp_path / "b" / "0").exists()


def test_a_test_metric_objective_is_refused_with_the_projects_selection_wording(tmp_path, capfd):
    from transferlab.errors import ConfigError
    from transferlab.metrics import check_selection

    with pytest.raises(ConfigError) as refusal:
        check_selection("test/acc", "objective")
    assert search(tmp_path, "objective=test/acc", "hydra.sweeper.n_trials=1") == 2
    err = capfd.readouterr().err
    assert errors(err) == [f"error: {refusal.value}"] and "Traceback" not in err
    assert not list(tmp_path.rglob("metrics.json")) and not list(tmp_path.rglob("optuna.db"))


# ---------------------------------------------------------------------------------------------------
# A grid with fewer points than n_trials
# ---------------------------------------------------------------------------------------------------

def test_a_grid_smaller_than_n_trials_ends_cleanly_with_its_report(tmp_path, capfd):
    code = search(tmp_path, "hydra/sweeper/sampler=grid", "hydra.sweeper.n_trials=3", "optimizer.lr=choice(0.001,0.01)",
                  "optimizer.weight_decay=0.0")
    err = capfd.readouterr().err
    assert code == 0, err[-3000:]
    assert "Traceback" not in err and "Study.stop" not in err
    results = yaml.safe_load((tmp_path / "s" / "optimization_results.yaml").read_text())
    assert results["trials"] == {"complete": 2, "pruned": 0, "failed": 0, "lost": 0}
    found = trials(results["storage"], results["study_name"])
    assert sorted(t.params["optimizer.lr"] for t in found) == pytest.approx([0.001, 0.01])  # each point once
    assert results["best_value"] == pytest.approx(max(t.value for t in found), abs=1e-12)
    assert "2 finished, 0 failed" in (tmp_path / "s" / "report.md").read_text()


# ---------------------------------------------------------------------------------------------------
# A storage folder that cannot be created
# ---------------------------------------------------------------------------------------------------

def test_a_storage_folder_that_cannot_be_created_is_one_error_line(tmp_path, capfd):
    url = "sqlite:////proc/nope/s.db"  # /proc takes no new folder, whoever runs the test
    assert search(tmp_path, "hydra.sweeper.n_trials=1", f"hydra.sweeper.storage={url}") == 2
    err = capfd.readouterr().err
    (line,) = errors(err)
    assert url in line and "/proc/nope" in line and "cannot be created" in line, line
    assert "Traceback" not in err and "FileNotFoundError" not in err
    assert not list(tmp_path.rglob("metrics.json"))


# ---------------------------------------------------------------------------------------------------
# A shared study whose key changes distribution kind
# ---------------------------------------------------------------------------------------------------

def test_a_key_searched_with_another_kind_of_distribution_is_refused_before_any_trial(tmp_path, capfd):
    url, storage = shared(tmp_path, "lr")
    assert search(tmp_path, "hydra.sweeper.n_trials=1", "optimizer.lr=choice(0.001,0.01)", *storage, name="a") == 0
    capfd.readouterr()
    assert search(tmp_path, "hydra.sweeper.n_trials=2", "optimizer.lr=interval(0.001,0.01)", *storage, name="b") == 2
    err = capfd.readouterr().err
    (line,) = errors(err)
    assert "optimizer.lr" in line and "'lr'" in line, line
    assert "CategoricalDistribution" in line and "FloatDistribution" in line, line  # both distributions
    assert "Traceback" not in err and "Cannot set different distribution kind" not in err
    assert states(url, "lr") == ["COMPLETE"]  # refused before asking: no trial left RUNNING, none added


def test_a_clash_met_while_building_a_trial_is_refused_and_the_trial_told_failed(tmp_path, monkeypatch, capfd):
    """Another sweeper may give the study the other kind of distribution after this one checked: the trial
    it asked is told FAIL and the refusal is the same."""
    import optuna

    url, storage = shared(tmp_path, "lr")
    study = optuna.create_study(study_name="lr", storage=url, direction="maximize")
    study.add_trial(optuna.trial.create_trial(params={"optimizer.lr": 0.01}, value=0.5, distributions={
        "optimizer.lr": optuna.distributions.CategoricalDistribution([0.001, 0.01])}))
    from hydra_plugins.transferlab_optuna import sweeper

    checked = []

    def first_check_passes(study, space):  # as if the other sweeper's trial came right after the check
        checked.append(True)
        return None if len(checked) == 1 else real(study, space)

    real = sweeper._clashes
    monkeypatch.setattr(sweeper, "_clashes", first_check_passes)
    code = search(tmp_path, "hydra.sweeper.n_trials=2", "optimizer.lr=interval(0.001,0.01)", *storage)
    err = capfd.readouterr().err
    assert len(checked) == 2, "the patched check was not the sweeper's"
    assert code == 2
    (line,) = errors(err)
    assert "optimizer.lr" in line and "CategoricalDistribution" in line and "FloatDistribution" in line, line
    assert "Traceback" not in err
    assert states(url, "lr") == ["COMPLETE", "FAIL"]


# ---------------------------------------------------------------------------------------------------
# An objective the runs do not report
# ---------------------------------------------------------------------------------------------------

def test_a_key_no_setting_reads_is_refused_before_any_trial_and_never_tuned(tmp_path, capfd):
    """``+optimizer.lrr`` (a typo) is read by nothing: tuning it would report importances for noise. The
    search resolves one trial's config first, as tl-train will, and stops there."""
    code = search(tmp_path, "+optimizer.lrr=interval(0.001,0.01)", "hydra.sweeper.n_trials=3")
    err = capfd.readouterr().err
    assert code == 2, err[-3000:]
    (line,) = errors(err)
    assert "optimizer.lrr is not a setting" in line and "lr" in line.split("its settings are:")[1], line
    assert "Traceback" not in err
    sweep = tmp_path / "s"
    assert not list(sweep.rglob("metrics.json")) and not list(sweep.rglob("config.yaml"))  # no trial ran
    assert not (sweep / "optuna.db").exists()  # refused before the study was created


def test_an_objective_missing_from_metrics_stops_the_search_after_the_first_trial(tmp_path, capfd):
    code = search(tmp_path, "objective=val/f1", "hydra.sweeper.n_trials=3", "hydra/sweeper/sampler=random")
    err = capfd.readouterr().err
    assert code == 2, err[-3000:]  # the objective is the user's to change, as every refusal
    (line,) = errors(err)
    assert "objective=val/f1" in line and "val/acc_best" in line and "test/acc" in line, line  # keys it reported
    assert "the job returned None" not in err and "Traceback" not in err
    sweep = tmp_path / "s"
    assert len(list(sweep.rglob("metrics.json"))) == 1  # the remaining trials never trained
    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    (trial,) = trials(results["storage"], results["study_name"])
    assert trial.state.name == "FAIL" and "objective=val/f1" in trial.user_attrs["error"]
    assert (sweep / "report.md").is_file()


# ---------------------------------------------------------------------------------------------------
# A storage URL's password
# ---------------------------------------------------------------------------------------------------

def test_a_urls_password_is_masked_and_remembered():
    from transferlab import redact

    url = "postgresql://user:pa@ss:w0rd@db.example:5432/optuna"
    assert redact.mask_url(url) == "postgresql://user:***@db.example:5432/optuna"
    assert redact.mask_url(f"hydra.sweeper.storage={url},seed=1") == \
        "hydra.sweeper.storage=postgresql://user:***@db.example:5432/optuna,seed=1"
    for plain in ("sqlite:////tmp/study.db", "postgresql://user@host/db", "http://host:8080/a@b", "a:b@c"):
        assert redact.mask_url(plain) == plain
    assert redact.mask_url(redact.mask_url(url)) == redact.mask_url(url)
    scrubbed = redact.scrub({"hydra": {"sweeper": {"storage": url}, "overrides": [f"hydra.sweeper.storage={url}"]},
                             "optuna_trial": {"storage": redact.mask_url(url)}})
    assert "pa@ss:w0rd" not in json.dumps(scrubbed) and "user:***@db.example" in json.dumps(scrubbed)
    redact.remember([f"hydra.sweeper.storage={url}"])  # the password alone, quoted elsewhere, is redacted too
    assert redact.scrub("the password was pa@ss:w0rd") == f"the password was {redact.REDACTED}"


def test_a_postgres_storage_password_never_reaches_the_console_or_a_file(tmp_path):
    """A subprocess, because the point is what a user's terminal shows: Hydra's logging and the error line
    of a real ``tl-train`` process (its storage on port 1 cannot be opened)."""
    secret = "Pw4Round3zz"
    url = f"postgresql://user:{secret}@127.0.0.1:1/db"
    result = process("tl-train", *TINY, f"paths.output_dir={tmp_path}", "hydra.sweeper.n_trials=1",
                     f"hydra.sweeper.storage={url}", cwd=tmp_path, env=ONE_THREAD)
    assert result.returncode == 2
    (line,) = errors(result.stderr)
    assert "postgresql://user:***@127.0.0.1:1/db" in line, line
    assert secret not in result.stdout + result.stderr
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path
