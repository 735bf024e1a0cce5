"""tl-report: its numbers must be exactly the mean and sample std of the runs' own metrics.json files."""
from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest
from helpers import cli, fake_run, read_csv, train
from omegaconf import OmegaConf
from wandb_reader import read_run as read_wandb_run

from transferlab.cli.callbacks import ReportCallback
from transferlab.cli.report import main as report_main
from transferlab.errors import ConfigError
from transferlab.reports import write_report


def table_line(md: str, label: str) -> str:
    return next(ln for ln in md.splitlines() if ln.startswith(f"| {label} |") or ln.startswith(f"| **{label}** "))


@pytest.fixture
def sweep(tmp_path) -> Path:
    """Three settings (two strategies, two learning rates), an incomplete run and a failed one."""
    root = tmp_path / "sweep"
    for seed in (1, 2, 3):
        fake_run(root, f"ft-lr003-s{seed}", seed=seed)
    for seed in (1, 2):
        fake_run(root, f"ft-lr01-s{seed}", seed=seed, lr=0.01)
        fake_run(root, f"lp-s{seed}", strategy="linear_probe", seed=seed)
    fake_run(root, "ft-lr003-s4", seed=4, status="incomplete")
    fake_run(root, "lp-s3", strategy="linear_probe", seed=3, status="failed")
    return root


def expected(root: Path, prefix: str, metric: str) -> tuple[float, float, int]:
    values = [json.loads(p.read_text())[metric] for p in sorted(root.glob(f"{prefix}-s*/metrics.json"))]
    return statistics.mean(values), statistics.stdev(values), len(values)


GROUPS = {"ft-lr003": "finetune, optimizer.lr=0.003", "ft-lr01": "finetune, optimizer.lr=0.01",
          "lp": "linear_probe, optimizer.lr=0.003"}


def test_rows_hold_mean_and_sample_std_of_each_setting(sweep):
    report = write_report([sweep])
    assert {p.name for p in report.paths} == {"report.md", "report.csv", "report.png"}
    rows = {r["label"]: r for r in read_csv(sweep / "report.csv") if r["kind"] == "row"}
    assert set(rows) == set(GROUPS.values())
    md = (sweep / "report.md").read_text()
    for prefix, label in GROUPS.items():
        for metric in ("test/acc", "test/f1", "test/precision", "val/acc_best"):
            mean, std, n = expected(sweep, prefix, metric)
            assert float(rows[label][metric]) == pytest.approx(mean, rel=1e-12)
            assert float(rows[label][f"{metric}_std"]) == pytest.approx(std, rel=1e-12)
            assert int(rows[label]["n_seeds"]) == n  # the incomplete and the failed run are not counted
            if metric in ("test/acc", "test/f1"):
                assert f"{mean:.4f} ± {std:.4f}" in table_line(md, label)
    best = max(GROUPS.values(), key=lambda label: float(rows[label]["test/acc"]))
    assert [label for label, r in rows.items() if r["best"] == "True"] == [best]
    assert f"| **{best}** (best) |" in md


def test_failed_and_incomplete_runs_are_listed_not_counted(sweep):
    write_report([sweep])
    runs = {Path(r["run_dir"]).name: r for r in read_csv(sweep / "report.csv") if r["kind"] == "run"}
    assert len(runs) == 9
    assert runs["lp-s3"]["status"] == "failed" and "CUDA out of memory" in runs["lp-s3"]["error"]
    assert runs["ft-lr003-s4"]["status"] == "incomplete" and runs["ft-lr003-s4"]["test/acc"] == ""
    assert runs["ft-lr003-s1"]["test/acc"] == repr(json.loads((sweep / "ft-lr003-s1/metrics.json").read_text())["test/acc"])
    md = (sweep / "report.md").read_text()
    assert "7 finished, 1 failed, 1 incomplete" in md
    problems = md.split("## Failed and incomplete runs")[1]
    assert "| failed | linear_probe, optimizer.lr=0.003 | 3 |" in problems and "CUDA out of memory in lp-s3" in problems
    assert "| incomplete | finetune, optimizer.lr=0.003 | 4 |" in problems


def test_a_failed_job_without_config_is_still_reported(tmp_path):
    fake_run(tmp_path, "ok", seed=1)
    (tmp_path / "died" / ".hydra").mkdir(parents=True)
    (tmp_path / "died" / "failed.json").write_text(json.dumps({"error": "bad lr", "strategy": "lp_ft", "seed": 7}))
    report = write_report([tmp_path])
    assert [r.status for r in report.runs] == ["failed", "finished"]
    assert "| failed | lp_ft | 7 |" in report.markdown and "bad lr" in report.markdown


def test_labels_show_only_what_differs(tmp_path):
    fake_run(tmp_path, "a", extra={"optimizer.kind": "sgd", "optimizer.momentum": 0.9})
    fake_run(tmp_path, "b")
    fake_run(tmp_path, "c", extra={"model.name": "resnet18", "model.drop_rate": 0.1})
    fake_run(tmp_path, "d", extra={"model.name": "resnet18", "model.drop_rate": 0.2})
    labels = {r.label for r in write_report([tmp_path]).rows}
    # optimizer.momentum comes with optimizer=sgd, the seed/paths/checkpoint/experiment name never split rows
    assert labels == {"finetune, tiny, optimizer=sgd", "finetune, tiny, optimizer=adamw",
                      "finetune, resnet18, model.drop_rate=0.1, optimizer=adamw",
                      "finetune, resnet18, model.drop_rate=0.2, optimizer=adamw"}


def test_significance_note(tmp_path):
    def metrics_of(d, acc):
        m = json.loads((d / "metrics.json").read_text())
        (d / "metrics.json").write_text(json.dumps({**m, "test/acc": acc}))

    for seed, (a, b) in enumerate([(0.80, 0.79), (0.90, 0.78)], 1):
        metrics_of(fake_run(tmp_path, f"ft{seed}", seed=seed), a)
        metrics_of(fake_run(tmp_path, f"lp{seed}", seed=seed, strategy="linear_probe"), b)
    md = write_report([tmp_path]).markdown  # ft 0.85 ± 0.071 vs lp 0.785: within one std
    assert "| **finetune** (best) | 0.8500 ± 0.0707 |" in md and "not significant" in md

    for seed in (1, 2):
        metrics_of(tmp_path / f"lp{seed}", 0.5)
    assert "not significant" not in write_report([tmp_path]).markdown


def test_single_seed_rows_have_zero_std_and_a_warning(tmp_path):
    fake_run(tmp_path, "a")
    fake_run(tmp_path, "b", strategy="linear_probe")
    report = write_report([tmp_path])
    assert all(row.std("test/acc") == 0.0 and len(row.runs) == 1 for row in report.rows)
    assert "single seed" in report.markdown


def test_logger_and_hydra_folders_are_not_runs(sweep):
    nested = sweep / "ft-lr003-s1"
    for folder in ("wandb/offline-run-x/files", ".hydra"):
        (nested / folder).mkdir(parents=True)
        (nested / folder / "config.yaml").write_text("a: 1\n")
    (sweep / "eval-only").mkdir()  # tl-eval leaves metrics.json without config.yaml
    (sweep / "eval-only" / "metrics.json").write_text(json.dumps({"test/acc": 0.1}))
    assert len(write_report([sweep]).runs) == 9


def test_out_directory_and_several_inputs(sweep, tmp_path):
    other = tmp_path / "other"
    fake_run(other, "x", strategy="partial")
    report_main([str(sweep), str(other), "--out", str(tmp_path / "out")])
    assert {r.label.split(",")[0] for r in write_report([sweep, other], tmp_path / "o2").rows} == \
        {"finetune", "linear_probe", "partial"}
    assert (tmp_path / "out" / "report.png").stat().st_size > 10_000 and not (other / "report.md").exists()


def test_no_runs_is_an_error_naming_the_directory(tmp_path):
    with pytest.raises(ConfigError, match=str(tmp_path)):
        write_report([tmp_path])


def test_cli(sweep, tmp_path):
    done = cli("tl-report", str(sweep), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "| **" in done.stdout and "(best)" in done.stdout
    assert f"wrote {sweep / 'report.png'}" in done.stdout

    empty = tmp_path / "nothing-here"
    empty.mkdir()
    done = cli("tl-report", str(empty), cwd=tmp_path)
    assert done.returncode == 2 and done.stderr.startswith("error: ") and str(empty) in done.stderr
    assert "Traceback" not in done.stderr


def _sweep_config(sweep: Path, logger: dict) -> OmegaConf:
    return OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep)}}, "experiment_name": "cmp", "logger": logger})


def test_multirun_callback_writes_the_report_and_a_wandb_summary_run(sweep, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    ReportCallback().on_multirun_end(_sweep_config(sweep, {"csv": {}, "wandb": {"project": "transferlab"}}))
    assert (sweep / "report.md").is_file() and (sweep / "report.png").is_file()
    logged = read_wandb_run(sweep)
    assert logged["exited"] and logged["run"]["group"] == "cmp" and logged["run"]["job_type"] == "report"
    assert logged["summary"]["report/finished_runs"] == 7 and logged["summary"]["report/failed_runs"] == 1
    table = json.loads((logged["file"].parent / "files" / logged["summary"]["report/table.path"]).read_text())
    rows = {r["label"]: r for r in read_csv(sweep / "report.csv") if r["kind"] == "row"}
    i, j = table["columns"].index("setting"), table["columns"].index("test/acc")
    assert {r[i]: r[j] for r in table["data"]} == {label: float(r["test/acc"]) for label, r in rows.items()}
    assert (logged["file"].parent / "files" / logged["summary"]["report/figure.path"]).is_file()


def test_multirun_callback_respects_a_sweep_without_wandb(tmp_path):
    fake_run(tmp_path, "a")
    ReportCallback().on_multirun_end(_sweep_config(tmp_path, {"csv": {}}))
    assert (tmp_path / "report.md").is_file() and not (tmp_path / "wandb").exists()
    ReportCallback().on_multirun_end(_sweep_config(tmp_path / "empty", {"csv": {}}))  # warns, never raises


@pytest.mark.slow
def test_report_of_real_runs(tmp_path, capsys):
    root = tmp_path / "runs"
    metrics = {(s, seed): train(root / f"{s}-{seed}", f"strategy={s}", f"seed={seed}")
               for s in ("finetune", "linear_probe") for seed in (1, 2)}
    report_main([str(root)])
    out = capsys.readouterr().out
    md = (root / "report.md").read_text()
    assert md in out
    assert len([ln for ln in md.splitlines() if ln.startswith("| ") and "±" in ln]) == 2
    for s in ("finetune", "linear_probe"):
        for metric in ("test/acc", "test/f1"):
            values = [metrics[s, seed][metric] for seed in (1, 2)]
            assert f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}" in table_line(md, s)
        assert f"| {metrics[s, 1]['trainable_params']:,} |" in table_line(md, s)
    assert (root / "report.png").stat().st_size > 10_000
