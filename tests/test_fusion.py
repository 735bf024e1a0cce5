"""Fusion (tl-fuse): WiSE-FT interpolation, soups and ensembles over real finished runs, their
checkpoints read back with tl-eval, and every refusal a user can hit.

One module-scoped set of real runs from one cached source (linear probe, two fine-tuned seeds, and a
scratch run as the odd one out); fusions run in this process through ``transferlab.fusion.fuse``
(the function ``tl-fuse`` calls) and, where the command line itself matters, as ``tl-fuse``.
"""
from __future__ import annotations

import csv
import json
import shutil

import pytest
import torch
from helpers import FAST, ONE_THREAD, cli, train

from transferlab.errors import ConfigError

pytestmark = pytest.mark.usefixtures("one_torch_thread")
NOISY = "+eval_sets.noisy.corruption.kind=gaussian_noise"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("fusion_runs")
    out = {}
    for name, overrides in (("probe", ["strategy=linear_probe", "seed=1"]), ("ft1", ["strategy=finetune", "seed=1"]),
                            ("ft2", ["strategy=finetune", "seed=2"]), ("scratch", ["strategy=scratch", "source.overrides=[]", "seed=1"])):
        out[name] = {"dir": root / name, "metrics": train(root / name, NOISY, *overrides)}
    return out


def fuse_cfg(out_dir, method: str, **values):
    from transferlab.config import compose_config, set_value

    cfg = compose_config([f"fusion={method}", "logger.wandb=null"], config_name="fuse")
    for key, value in {"paths.run_dir": str(out_dir), **values}.items():
        set_value(cfg, key, value)
    return cfg


def fuse(out_dir, method: str, **values) -> dict:
    from transferlab.fusion.act import fuse as run_fuse

    return run_fuse(fuse_cfg(out_dir, method, **values))


def candidates(out_dir) -> list[dict]:
    with open(out_dir / "candidates.csv") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def wise(runs, tmp_path_factory):
    out = tmp_path_factory.mktemp("wise") / "fused"
    metrics = fuse(out, "wise_ft", runs=[str(runs["probe"]["dir"]), str(runs["ft1"]["dir"])])
    return {"dir": out, "metrics": metrics, "candidates": candidates(out)}


def test_alpha_one_is_the_fine_tuned_run_and_alpha_zero_the_probe(runs, wise):
    by_alpha = {float(c["alpha"]): c for c in wise["candidates"]}
    assert sorted(by_alpha) == pytest.approx([i / 10 for i in range(11)])
    for alpha, end in ((1.0, "ft1"), (0.0, "probe")):
        run = runs[end]["metrics"]
        for key in ("test/acc", "test/f1", "eval/noisy/acc"):  # counts of the same predictions
            assert float(by_alpha[alpha][key]) == run[key], (alpha, key)
        assert float(by_alpha[alpha]["test/loss"]) == pytest.approx(run["test/loss"], rel=1e-5)


def test_alpha_is_chosen_on_validation_and_every_alpha_reports_test_and_shift(wise):
    rows = wise["candidates"]
    best_val = max(float(c["val/acc"]) for c in rows)
    chosen = [c for c in rows if c["chosen"] == "True"]
    assert len(chosen) == 1 and float(chosen[0]["val/acc"]) == best_val
    assert chosen[0]["candidate"] == wise["metrics"]["chosen"]
    assert all(c["test/acc"] and c["eval/noisy/acc"] for c in rows)
    assert wise["metrics"]["test/acc"] == float(chosen[0]["test/acc"])
    assert (wise["dir"] / "fusion.png").stat().st_size > 0


def test_interpolation_equals_the_hand_computed_state_and_keeps_integer_buffers(runs):
    from transferlab.fusion.base import interpolate, read_ingredient

    theta_0, theta_1 = read_ingredient(runs["probe"]["dir"]).state, read_ingredient(runs["ft1"]["dir"]).state
    mixed = interpolate(theta_0, theta_1, 0.3)
    assert mixed.keys() == theta_0.keys() == theta_1.keys()
    integers = [k for k, v in theta_1.items() if not v.is_floating_point()]
    assert integers and all(k.endswith("num_batches_tracked") for k in integers)
    for k, v in mixed.items():
        if v.is_floating_point():
            expected = 0.7 * theta_0[k].double() + 0.3 * theta_1[k].double()
            torch.testing.assert_close(v.double(), expected, rtol=1e-6, atol=1e-7)
        else:  # a count, not a weight: the fine-tuned end's, untouched
            assert torch.equal(v, theta_1[k]) and v.dtype == theta_1[k].dtype
    assert any(not torch.equal(theta_0[k], theta_1[k]) for k in integers)  # so the check above can fail


def test_tl_eval_of_the_fused_checkpoint_reproduces_the_fusion(wise, tmp_path):
    ckpt = wise["dir"] / "checkpoints" / "fused.ckpt"
    torch.load(ckpt, map_location="cpu", weights_only=True)  # tensors and plain containers only
    proc = cli("tl-eval", f"ckpt_path={ckpt}", f"hydra.run.dir={tmp_path / 'eval'}", cwd=tmp_path, env=ONE_THREAD)
    assert proc.returncode == 0, proc.stderr[-2000:]
    evaluated = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    for key in ("test/acc", "test/f1", "eval/noisy/acc"):
        assert evaluated[key] == wise["metrics"][key], key


def test_greedy_soup_is_never_worse_on_validation_than_its_best_ingredient(runs, tmp_path):
    sweep = tmp_path / "sweep"
    for name in ("ft1", "ft2", "probe"):
        shutil.copytree(runs[name]["dir"], sweep / name)
    metrics = fuse(tmp_path / "soup", "greedy_soup", sweep=str(sweep), where={"strategy.label": "finetune"})
    rows = candidates(tmp_path / "soup")
    alone = [r for r in rows if not r["candidate"].startswith("step")]
    assert len(alone) == 2 and metrics["ingredients"] == 2  # the probe was filtered out by `where`
    assert metrics["val/acc"] >= max(float(r["val/acc"]) for r in alone)
    steps = [r for r in rows if r["candidate"].startswith("step")]
    assert steps[0]["kept"] == "True" and len(steps) == 2
    assert (tmp_path / "soup" / "checkpoints" / "fused.ckpt").is_file()


def test_uniform_soup_is_the_mean_of_the_weights(runs, tmp_path):
    from transferlab.fusion.base import read_ingredient
    from transferlab.models.checkpoint import read_checkpoint

    fuse(tmp_path / "uniform", "uniform_soup", runs=[str(runs["ft1"]["dir"]), str(runs["ft2"]["dir"])])
    state = read_checkpoint(tmp_path / "uniform" / "checkpoints" / "fused.ckpt")["state_dict"]
    a, b = (read_ingredient(runs[n]["dir"]).state for n in ("ft1", "ft2"))
    key = next(k for k, v in a.items() if v.is_floating_point() and not torch.equal(v, b[k]))
    torch.testing.assert_close(state[f"model.{key}"].double(), (a[key].double() + b[key].double()) / 2,
                               rtol=1e-6, atol=1e-7)


def test_an_ensemble_of_one_run_is_that_run_and_of_two_costs_two_passes(runs, tmp_path):
    one = fuse(tmp_path / "one", "ensemble", runs=[str(runs["ft1"]["dir"])])
    for key in ("test/acc", "test/f1", "eval/noisy/acc"):
        assert one[key] == runs["ft1"]["metrics"][key], key
    assert one["test/loss"] == pytest.approx(runs["ft1"]["metrics"]["test/loss"], rel=1e-5)
    assert one["forward_passes"] == 1 and one["fused_checkpoint"] is None
    # an ensemble needs no shared initialisation: the scratch run may join
    two = fuse(tmp_path / "two", "ensemble", runs=[str(runs["ft1"]["dir"]), str(runs["scratch"]["dir"])],
               **{"fusion.combine": "logits"})
    assert two["forward_passes"] == 2 and len(candidates(tmp_path / "two")) == 3


@pytest.mark.parametrize("case", ["initialisation", "classes", "unfinished", "no_checkpoint", "alpha", "empty_sweep",
                                  "eval_set", "one_end", "not_a_run", "where_key"])
def test_bad_input_is_refused_naming_it_and_leaves_no_finished_fusion(runs, tmp_path, case):
    probe, ft = str(runs["probe"]["dir"]), str(runs["ft1"]["dir"])
    values, expected = {"runs": [probe, ft]}, None
    method = "wise_ft"
    if case == "initialisation":  # scratch starts from random weights, the probe from the source run
        values, expected = {"runs": [str(runs["scratch"]["dir"]), ft]}, "initialisation differ"
    elif case == "classes":  # same shapes, classes in another order
        other = tmp_path / "other"
        shutil.copytree(ft, other)
        ckpt = torch.load(other / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)
        ckpt["hyper_parameters"]["tasks"][0]["class_names"] = list(reversed(ckpt["hyper_parameters"]["tasks"][0]
                                                                            ["class_names"]))
        torch.save(ckpt, other / "checkpoints" / "best.ckpt")
        values, expected = {"runs": [probe, str(other)]}, "tasks and classes differ"
    elif case == "unfinished":
        half = tmp_path / "half"
        shutil.copytree(ft, half)
        (half / "metrics.json").unlink()
        values, expected = {"runs": [probe, str(half)]}, "did not finish"
    elif case == "no_checkpoint":
        gone = tmp_path / "gone"
        shutil.copytree(ft, gone)
        shutil.rmtree(gone / "checkpoints")
        values, expected = {"runs": [probe, str(gone)]}, "reported its test metrics with best.ckpt, and .* is gone"
    elif case == "alpha":
        values, expected = {"runs": [probe, ft], "fusion.alphas": [0.0, 1.5]}, "1.5"
    elif case == "empty_sweep":
        (tmp_path / "empty").mkdir()
        method, values, expected = "greedy_soup", {"runs": [], "sweep": str(tmp_path / "empty")}, "no finished"
    elif case == "eval_set":
        values, expected = {"runs": [probe, ft], "eval_sets": {"shifted": "digitz"}}, "'digitz' is not a dataset"
    elif case == "one_end":
        values, expected = {"runs": [ft]}, "exactly 2 runs"
    elif case == "not_a_run":
        values, expected = {"runs": [probe, str(tmp_path / "nowhere")]}, "does not exist"
    elif case == "where_key":  # the README's old example: the key is strategy.label, `name` matched nothing
        sweep = tmp_path / "sweep"
        shutil.copytree(ft, sweep / "ft")
        method, values = "greedy_soup", {"runs": [], "sweep": str(sweep), "where": {"strategy.name": "finetune"}}
        expected = "where.strategy.name: no run under .* has a setting strategy.name; did you mean: .*strategy.label"
    out = tmp_path / "out"
    with pytest.raises(ConfigError, match=expected):
        fuse(out, method, **values)
    assert not out.exists()  # refused before the folder was taken: no config.yaml to be mistaken for a run


def test_tl_fuse_command_line_and_its_wandb_run(runs, tmp_path):
    from wandb_reader import read_run

    out = tmp_path / "fused"
    proc = cli("tl-fuse", "method=wise_ft", f"runs=[{runs['probe']['dir']},{runs['ft1']['dir']}]",
               "fusion.alphas=[0,0.5,1]", f"hydra.run.dir={out}", cwd=tmp_path, env=ONE_THREAD)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "wise_ft: chosen alpha=" in proc.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    recorded = read_run(out)
    assert recorded["summary"]["test/acc"] == pytest.approx(metrics["test/acc"])  # the chosen α, not the last step
    assert recorded["run"]["job_type"] == "fuse"
    # an output directory that holds a finished fusion is never overwritten
    again = cli("tl-fuse", "method=wise_ft", f"runs=[{runs['probe']['dir']},{runs['ft1']['dir']}]",
                f"hydra.run.dir={out}", cwd=tmp_path, env=ONE_THREAD)
    assert again.returncode != 0 and "already holds a finished" in again.stderr
    assert json.loads((out / "metrics.json").read_text()) == metrics
    bad = cli("tl-fuse", "method=wise_ft", f"runs=[{runs['probe']['dir']},{runs['ft1']['dir']}]", "fusion.alphas=[-0.1]",
              f"hydra.run.dir={tmp_path / 'bad'}", cwd=tmp_path, env=ONE_THREAD)
    assert bad.returncode != 0 and "-0.1" in bad.stderr and "[0, 1]" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_a_run_reports_its_evaluation_sets(runs):
    m = runs["ft1"]["metrics"]
    assert {"eval/noisy/acc", "eval/noisy/f1", "eval/noisy/loss"} <= set(m)
    assert m["eval/noisy/acc"] != m["test/acc"]  # noise changes predictions: a different data set was tested


def test_a_clean_evaluation_set_equal_to_the_test_data_scores_like_the_test_split(tmp_path):
    m = train(tmp_path / "same", "strategy=linear_probe", "+eval_sets.same=digits_fewshot",
              "data.train_per_class=10", "trainer.max_epochs=1")
    assert m["eval/same/acc"] == m["test/acc"] and m["eval/same/f1"] == m["test/f1"]


def test_report_lists_fused_models_beside_strategies(runs, wise, tmp_path):
    from transferlab.reports import write_report

    root = tmp_path / "all"
    for name in ("probe", "ft1"):
        shutil.copytree(runs[name]["dir"], root / name)
    shutil.copytree(wise["dir"], root / "fuse" / "wise_ft_s1")
    report = write_report([root])
    labels = [row.label for row in report.rows]
    assert sorted(labels) == ["finetune", "linear_probe", "wise_ft"]
    assert "eval/noisy/acc" in report.markdown and "Fused rows (wise_ft)" in report.markdown
    assert (root / "fusion.png").is_file() and "fusion.png" in report.markdown
    row = next(r for r in report.rows if r.label == "wise_ft")
    assert row.mean("test/acc") == wise["metrics"]["test/acc"]


@pytest.mark.slow
def test_the_compare_sweep_fuses_its_runs_into_rows_of_its_report(tmp_path):
    proc = cli("tl-train", "experiment=compare", *FAST, "strategy=linear_probe,finetune", "seed=1,2",
               f"paths.output_dir={tmp_path / 'out'}", cwd=tmp_path, env=ONE_THREAD)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (report,) = (tmp_path / "out" / "multirun").rglob("report.md")
    sweep = report.parent
    assert sorted(p.name for p in (sweep / "fuse").iterdir()) == ["ensemble", "greedy_soup", "wise_ft_s1", "wise_ft_s2"]
    text = report.read_text()
    rows = {ln.split("|")[1].strip().strip("*").replace(" (best)", "").replace("**", ""): ln
            for ln in text.split("\n\n")[2].splitlines()[2:]}
    assert set(rows) == {"linear_probe", "finetune", "wise_ft", "greedy_soup, over finetune", "ensemble, over finetune"}
    assert "2 (1, 2)" in rows["wise_ft"]  # one interpolation per seed, mean ± std over them
    assert "eval/noisy/acc" in text and (sweep / "fusion.png").is_file()
    soup = json.loads((sweep / "fuse" / "greedy_soup" / "metrics.json").read_text())
    assert soup["ingredients"] == 2 and soup["seed"] == "1+2"
