"""Fair comparison: the report picks each strategy's tuned hyperparameters on validation only, and
every run records the learning rates its parameter groups actually trained at."""
from __future__ import annotations

import json

import pytest
from helpers import FAST, cli, compose, fake_run, read_csv, train
from pytorch_lightning import Callback

from transferlab.errors import ConfigError
from transferlab.plan import resolve
from transferlab.reports import write_report


def tuned_run(root, name, *, strategy, lr, seed, val, test, model="tiny"):
    d = fake_run(root, name, strategy=strategy, seed=seed, lr=lr, extra={"model.name": model})
    metrics = json.loads((d / "metrics.json").read_text())
    metrics.update({"val/acc_best": val, "test/acc": test, "model": model,
                    "lr/backbone/peak": 0.0 if strategy == "linear_probe" else lr, "lr/heads/peak": 10 * lr})
    (d / "metrics.json").write_text(json.dumps(metrics))
    return d


@pytest.fixture
def sweep(tmp_path):
    """lp_ft: lr 1e-3 is best on validation, 1e-2 would be best on test. finetune: the opposite order.
    A finetune run of another model must stay a row of its own."""
    root = tmp_path / "sweep"
    for seed in (1, 2):
        tuned_run(root, f"lpft_lo_{seed}", strategy="lp_ft", lr=1e-3, seed=seed, val=0.90, test=0.70 + seed / 100)
        tuned_run(root, f"lpft_hi_{seed}", strategy="lp_ft", lr=1e-2, seed=seed, val=0.80, test=0.95)
        tuned_run(root, f"ft_lo_{seed}", strategy="finetune", lr=1e-3, seed=seed, val=0.70, test=0.99)
        tuned_run(root, f"ft_hi_{seed}", strategy="finetune", lr=1e-2, seed=seed, val=0.85, test=0.60)
        tuned_run(root, f"ft_big_{seed}", strategy="finetune", lr=1e-3, seed=seed, val=0.5, test=0.5, model="big")
    return root


def test_selection_picks_by_validation_even_where_test_would_pick_otherwise(sweep):
    report = write_report([sweep], select_by="val/acc_best")
    rows = {r.label: r for r in report.rows}
    assert set(rows) == {"lp_ft, tiny", "finetune, tiny", "finetune, big"}  # another model is never collapsed
    lpft, ft = rows["lp_ft, tiny"], rows["finetune, tiny"]
    assert lpft.chosen == "optimizer.lr=0.001" and lpft.mean("test/acc") == pytest.approx(0.715)
    assert ft.chosen == "optimizer.lr=0.01" and ft.mean("test/acc") == pytest.approx(0.60)
    assert rows["finetune, big"].chosen == "(only one setting)" and len(rows["finetune, big"].tried) == 1
    assert [len(r.runs) for r in report.rows] == [2, 2, 2]
    assert report.rows[0].label == "lp_ft, tiny" and report.rows[0].best  # ranked by test at the chosen setting
    md = report.markdown
    assert "chosen on val/acc_best" in md and "## Every setting tried (chosen on val/acc_best)" in md
    assert "| lp_ft, tiny | lp_ft, tiny, optimizer.lr=0.01 | 0.8000 ± 0.0000 | 0.9500 ± 0.0000 | 2 |  |" in md
    assert "lr/backbone/peak" in md  # the rates each strategy actually trained at
    csv_rows = read_csv(sweep / "report.csv")
    kinds = [r["kind"] for r in csv_rows]
    assert kinds.count("row") == 3 and kinds.count("tried") == 5 and kinds.count("run") == 10
    chosen = {r["label"]: r["chosen"] for r in csv_rows if r["kind"] == "row"}
    assert chosen["lp_ft, tiny"] == "optimizer.lr=0.001"


def test_without_select_by_every_setting_is_its_own_row(sweep):
    report = write_report([sweep])
    assert len(report.rows) == 5 and all(not r.chosen and not r.tried for r in report.rows)
    assert "chosen on" not in report.markdown


def test_a_test_metric_cannot_choose_and_the_cli_takes_select_by_like_an_override(sweep, tmp_path):
    with pytest.raises(ConfigError, match="select_by=test/acc is not a validation metric"):
        write_report([sweep], select_by="test/acc")
    with pytest.raises(ConfigError, match="no finished run of .* recorded val/nothing"):
        write_report([sweep], select_by="val/nothing")
    proc = cli("tl-report", str(sweep), "select_by=val/acc_best", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "Every setting tried (chosen on val/acc_best)" in proc.stdout
    proc = cli("tl-report", str(sweep), "select_by=test/f1", cwd=tmp_path)
    assert proc.returncode != 0 and "error: select_by=test/f1 is not a validation metric" in proc.stderr


class OptimizerRates(Callback):
    """What the optimizer's groups hold at the start of each step, and whether they train."""

    def __init__(self):
        self.steps = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.steps.append({g["name"]: g["lr"] if any(p.requires_grad for p in g["params"]) else 0.0
                           for g in trainer.optimizers[0].param_groups})


def test_each_group_records_the_rate_it_trained_at_on_the_first_and_the_last_step(tmp_path, one_torch_thread):
    from transferlab import run

    seen = OptimizerRates()
    run.train(resolve(compose("trainer.max_epochs=3", "trainer.enable_progress_bar=false", "logger=csv", "source=none",
                      "data.train_per_class=10", "strategy=lp_ft", "strategy.lp_epochs=1", "optimizer.layer_decay=0.7",
                      run_dir=tmp_path)), callbacks=[seen])
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    first, last = seen.steps[0], seen.steps[-1]
    assert len(seen.steps) == 6 and first.keys() == last.keys()
    for group in first:  # exact: the same floats, read where the optimizer reads them
        assert metrics[f"lr/{group}/first"] == first[group]
        assert metrics[f"lr/{group}/last"] == last[group]
    backbone = [g for g in first if g.startswith("backbone.")]
    assert all(first[g] == 0.0 for g in backbone) and any(last[g] > 0 for g in backbone)  # LP, then FT
    assert metrics["lr/backbone/peak"] == max(s[g] for s in seen.steps for g in backbone) > 0
    assert metrics["lr/heads/peak"] == max(s[g] for s in seen.steps for g in s if g.startswith("heads."))


def test_a_linear_probe_backbone_trains_at_zero(tmp_path, one_torch_thread):
    metrics = train(tmp_path, "source=none", "strategy=linear_probe", "trainer.max_epochs=2")
    assert metrics["lr/backbone/peak"] == 0.0 and metrics["lr/heads/peak"] > 0


@pytest.mark.slow
def test_a_sweep_with_select_by_reports_each_strategy_at_its_best_rate(tmp_path):
    proc = cli("tl-train", "-m", *FAST, "source=none", "trainer.max_epochs=2", "strategy=finetune,linear_probe",
               "optimizer.lr=1e-3,1e-2", "seed=1", "hydra.callbacks.report.select_by=val/acc_best",
               f"paths.output_dir={tmp_path / 'out'}", cwd=tmp_path, env={"OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    (report,) = (tmp_path / "out" / "multirun").rglob("report.md")
    text = report.read_text()
    assert "## Every setting tried (chosen on val/acc_best)" in text
    rows = [ln for ln in text.split("## Every")[0].splitlines() if ln.startswith("| ") and "optimizer.lr=" in ln]
    assert len(rows) == 2  # one row per strategy, each naming its chosen rate

