"""Run directories read from anywhere (round 3): damaged runs in report.md, paths stored absolute,
resume= without the source checkpoint, resume= of a fusion, saved configs that lack a group, a report
folder that cannot be written, and ``${`` in an output folder."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import yaml
from helpers import FAST, ONE_THREAD, cli, compose, train
from omegaconf import OmegaConf

import transferlab
from transferlab import runs
from transferlab.errors import ConfigError
from transferlab.plan import resolve

TINY = ["source=none", "trainer.max_epochs=1"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory, one_torch_thread):
    """One tiny finished run (1 epoch, no source run): the run the tests copy and edit."""
    run_dir = tmp_path_factory.mktemp("round3") / "ft"
    train(run_dir, *TINY)
    return run_dir


def edited_copy(run: Path, dest: Path, edit, *, finished: bool = True, cwd=None) -> Path:
    """A copy of ``run`` whose config.yaml went through ``edit(config)``; env.json's cwd set to ``cwd``
    (None: not recorded, as by runs saved before it was)."""
    shutil.copytree(run, dest)
    config = yaml.safe_load((dest / "config.yaml").read_text())
    edit(config)
    (dest / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    env = json.loads((dest / "env.json").read_text())
    env.pop("cwd", None)
    if cwd is not None:
        env["cwd"] = str(cwd)
    (dest / "env.json").write_text(json.dumps(env))
    if not finished:
        (dest / "metrics.json").unlink()
    return dest


def set_key(key, value):
    def edit(config):
        node = config
        *parents, last = key.split(".")
        for part in parents:
            node = node[part]
        node[last] = value
    return edit


def dropped(*keys):
    def edit(config):
        for key in keys:
            node = config
            *parents, last = key.split(".")
            for part in parents:
                node = node[part]
            node.pop(last)
    return edit


# --- 1. report.md lists damaged runs ---------------------------------------------------------------
def fake_finished(d: Path, seed: int = 1, metrics="default") -> Path:
    d.mkdir(parents=True)
    (d / "config.yaml").write_text(yaml.safe_dump({
        "config_version": 2, "seed": seed, "model": {"name": "tiny", "kind": "timm"},
        "data": {"kind": "digits", "label": "digits"}, "strategy": {"kind": "finetune", "label": "finetune"}}))
    if metrics == "default":
        metrics = {"test/acc": 0.5 + seed / 100, "strategy": "finetune", "model": "tiny", "data": "digits", "seed": seed}
    (d / "metrics.json").write_text(json.dumps(metrics))
    return d


def test_report_md_counts_and_lists_damaged_runs_with_their_reason(tmp_path):
    fake_finished(tmp_path / "good")
    bad_config = fake_finished(tmp_path / "bad_config", seed=2)
    (bad_config / "config.yaml").write_text("model: [unclosed\n")
    fake_finished(tmp_path / "list_metrics", seed=3, metrics=[1, 2])
    report = transferlab.report(tmp_path)
    md = (tmp_path / "report.md").read_text()
    assert md == report.markdown
    assert "1 finished" in md and "2 damaged" in md
    damaged = md.split("## Damaged runs")[1]
    assert "bad_config" in damaged and "is not a readable config" in damaged
    assert "list_metrics" in damaged and "holds a JSON list" in damaged
    assert [len(row.runs) for row in report.rows] == [1]  # the good run is the only row, alone


# --- 2. paths in a saved config -------------------------------------------------------------------
def test_user_file_paths_are_stored_absolute_and_outputs_are_not(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    plan = resolve(compose(*TINY, "model.checkpoint=weights/best.ckpt", "ckpt_path=old/last.ckpt", "data=image_folder",
                           "data.root=images/main", "+eval_sets.other.root=images/other", run_dir=tmp_path / "run"))
    config = plan.config
    assert config.model.checkpoint == str(tmp_path / "weights" / "best.ckpt")
    assert config.ckpt_path == str(tmp_path / "old" / "last.ckpt")
    assert config.data.root == str(tmp_path / "images" / "main")
    assert config.eval_sets.other.root == str(tmp_path / "images" / "other")
    assert config.paths.output_dir == "outputs"  # where runs go is not a file of the user's

    plan = resolve(compose("model=tiny_bert", "data=text_files", "data.path=texts/a.csv", "model.tokenizer.path=tok",
                           "source=none", run_dir=tmp_path / "run"))
    assert plan.config.data.path == str(tmp_path / "texts" / "a.csv")
    assert plan.config.model.tokenizer.path == str(tmp_path / "tok")
    hub = resolve(compose("model=tiny_bert", "data=hf_datasets", "data.path=glue", "data.subset=sst2", "source=none",
                          "model.tokenizer.path=/abs/tok", run_dir=tmp_path / "run"))
    assert hub.config.data.path == "glue"  # a hub name, not a folder here


def test_a_run_records_the_folder_it_was_started_in(finished):
    assert json.loads((finished / "env.json").read_text())["cwd"] == os.getcwd()


def test_relative_path_of_an_old_run_is_found_against_its_recorded_folder(finished, tmp_path, monkeypatch):
    started = tmp_path / "project"
    (started / "runs").mkdir(parents=True)
    shutil.copytree(finished, started / "runs" / "ft")
    run = edited_copy(finished, tmp_path / "c1", set_key("model.checkpoint", "runs/ft/checkpoints/best.ckpt"),
                      cwd=started, finished=False)
    monkeypatch.chdir(tmp_path)
    plan = resolve(compose(*TINY, f"resume={run}", run_dir=run))
    assert plan.config.model.checkpoint == str(started / "runs" / "ft" / "checkpoints" / "best.ckpt")


def test_relative_path_of_an_old_run_that_recorded_no_folder_is_an_error_naming_it(finished, tmp_path, monkeypatch):
    from transferlab.cli.reproduce import reproduce

    run = edited_copy(finished, tmp_path / "c1", set_key("model.checkpoint", "runs/ft/checkpoints/best.ckpt"))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    with pytest.raises(ConfigError) as e:
        reproduce(run, tmp_path / "again", True, None)
    message = str(e.value)
    assert "model.checkpoint='runs/ft/checkpoints/best.ckpt'" in message
    assert "relative to the folder that run was started from" in message
    assert not (tmp_path / "again").exists()


# --- 3. resume= from another folder ----------------------------------------------------------------
def test_resume_from_another_folder_does_not_need_the_source_checkpoint(finished, tmp_path, monkeypatch):
    run = edited_copy(finished, tmp_path / "c1_unf", set_key("model.checkpoint", "runs/ft/checkpoints/best.ckpt"),
                      finished=False)
    monkeypatch.chdir(tmp_path)  # runs/ft/... names nothing here
    result = transferlab.train(f"resume={run}", "trainer.enable_progress_bar=false")
    assert result.run_dir == run.resolve() and (run / "metrics.json").is_file()
    assert yaml.safe_load((run / "config.yaml").read_text())["model"]["checkpoint"] == "runs/ft/checkpoints/best.ckpt"


# --- 4. resume= of a fusion folder -------------------------------------------------------------------
def test_resume_of_a_fusion_says_it_is_not_a_training_run(tmp_path):
    fused = tmp_path / "fused"
    fused.mkdir()
    (fused / "config.yaml").write_text(yaml.safe_dump({"config_version": 2, "fusion": {"kind": "wise_ft"},
                                                       "runs": ["/a", "/b"]}))
    (fused / "metrics.json").write_text(json.dumps({"test/acc": 0.5}))
    with pytest.raises(ConfigError) as e:
        resolve(compose(*TINY, f"resume={fused}", run_dir=tmp_path / "new"))
    assert "is not a training run" in str(e.value) and str(fused) in str(e.value)


# --- 5. a saved config lacking a group --------------------------------------------------------------
def test_old_config_without_groups_that_cannot_change_the_result_is_filled_in(finished, tmp_path):
    run = edited_copy(finished, tmp_path / "old", dropped("multitask", "source", "eval_sets", "trainer.accelerator"),
                      finished=False)
    plan = resolve(compose(*TINY, f"resume={run}", run_dir=run))  # resume= reads it as tl-train does
    assert plan.config.multitask.sampling == "max_size_cycle" and plan.config.source.overrides == []
    config = OmegaConf.create(runs.RunDir(run).read_config())
    assert resolve(config, {"paths.run_dir": str(tmp_path / "again"), "resume": None}).multitask.monitor is None


def test_old_config_without_a_group_that_decides_the_result_is_refused_naming_it(finished, tmp_path):
    from transferlab.cli.reproduce import reproduce

    run = edited_copy(finished, tmp_path / "old", dropped("scheduler"))
    with pytest.raises(ConfigError) as e:
        reproduce(run, tmp_path / "again", True, None)
    assert "has no 'scheduler'" in str(e.value) and str(run / "config.yaml") in str(e.value)
    unfinished = edited_copy(finished, tmp_path / "old_unf", dropped("scheduler"), finished=False)
    with pytest.raises(ConfigError, match="has no 'scheduler'"):
        resolve(compose(*TINY, f"resume={unfinished}", run_dir=unfinished))


# --- 6. a report folder that cannot be written -------------------------------------------------------
@pytest.mark.parametrize("where", ["proc", "under_a_file"])
def test_report_into_a_folder_that_cannot_be_written_is_an_error_naming_it(tmp_path, where):
    fake_finished(tmp_path / "runs" / "good")
    (tmp_path / "a_file").write_text("")
    out = "/proc/self/fdinfo" if where == "proc" else str(tmp_path / "a_file" / "report")
    with pytest.raises(ConfigError) as e:
        transferlab.report(tmp_path / "runs", out=out)
    assert f"'{out}'" in str(e.value) and "--out DIR" in str(e.value)
    assert not list((tmp_path / "runs").glob("report.*"))


# --- 7. ${ in an output folder ----------------------------------------------------------------------
def test_an_output_folder_with_an_interpolation_is_refused_before_it_is_created(tmp_path):
    folder = tmp_path / "a${x}"
    with pytest.raises(ConfigError) as e:
        runs.claim(str(folder))
    assert str(folder) in str(e.value) and "'${'" in str(e.value)
    assert not folder.exists()
    with pytest.raises(ConfigError, match="interpolation"):
        runs.check_sweep(str(tmp_path / "sweep${x}"))


@pytest.mark.parametrize("folder,said", [("out/b\\${x}", "error: the output folder"),
                                         ("out/b${x}", "error: hydra.run.dir=out/b${x} cannot be resolved")])
def test_tl_train_refuses_an_interpolation_in_hydra_run_dir(tmp_path, folder, said):
    """Through tl-train's main(), not the API: Hydra itself opens the run's log before any job code runs, so
    only the command line shows whether the refusal comes first (exit code 2, one line, no folder left behind)."""
    result = cli("tl-train", *TINY, *FAST[1:3], "data.train_per_class=10", f"hydra.run.dir={folder}",
                 cwd=tmp_path, env=ONE_THREAD, timeout=300)
    assert result.returncode == 2, result.stderr[-2000:]
    assert said in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
