"""tl-rank: candidate sources scored by transferability on the target data, ranked, fine-tuned and checked
against the accuracies fine-tuning reached. Candidates are real source runs (digits 0-4, trained here or taken
from the shared test cache) and a random backbone; every ranking goes through the Python API or the console
script's main(), as a user starts it."""
from __future__ import annotations

import json
import math

import pytest

from helpers import CORPUS, FAST_SOURCE, MLM_SOURCE, cli, metrics, read_csv

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SOURCE = FAST_SOURCE.split("=", 1)[1]  # the digits 0-4 source run every FAST test uses (cached): 4 epochs
SHORT = SOURCE.replace("'trainer.max_epochs=4'", "'trainer.max_epochs=1'")
RANDOM = SHORT.replace("'strategy=finetune'", "'strategy=linear_probe'")  # a random backbone, its head trained
CANDIDATES = (f"candidates=[{{name: source, source.overrides: {SOURCE}}}, {{name: short source, source.overrides: "
              f"{SHORT}}}, {{name: random backbone, source.overrides: {RANDOM}}}]")
FINETUNE = ["finetune.seeds=[1]", "finetune.overrides=['strategy=finetune','trainer.max_epochs=3',"
            "'trainer.enable_progress_bar=false']"]


@pytest.fixture(scope="module")
def ranked(tmp_path_factory):
    import transferlab

    root = tmp_path_factory.mktemp("rank")
    # a feature cache of its own: other test processes share the default one
    first = transferlab.rank(CANDIDATES, *FINETUNE, f"paths.feature_cache={root / 'features'}", run_dir=root / "first")
    return root, first


def test_every_candidate_gets_every_score_and_its_cost_in_the_ranking_files(ranked):
    _, first = ranked
    rows = {r["candidate"]: r for r in read_csv(first.run_dir / "ranking.csv")}
    assert set(rows) == {"source", "short source", "random backbone"}
    for row in rows.values():
        for score in ("logme", "hscore", "leep", "nce"):
            assert math.isfinite(float(row[score])) and float(row[f"{score}_seconds"]) >= 0
        assert "task 'main'" in row["source_head"] and int(row["feature_dim"]) > 0
    md = (first.run_dir / "ranking.md").read_text()
    for score, title in (("logme", "LogME"), ("leep", "LEEP")):  # each section lists the candidates best first
        section = md.split(f"## {title}\n")[1].split("\n## ")[0]
        listed = [line.split(" | ")[1] for line in section.splitlines() if line.startswith("| ") and line[2].isdigit()]
        assert listed == [label for label, _ in first.metrics["ranking"][score]]
        assert listed == sorted(rows, key=lambda c: -float(rows[c][score]))
    assert (first.run_dir / "ranking.png").stat().st_size > 1000


def test_the_trained_source_ranks_above_the_random_backbone(ranked):
    order = [label for label, _ in ranked[1].metrics["ranking"]["logme"]]
    assert order.index("source") < order.index("random backbone")


def test_fine_tuned_runs_are_real_runs_and_tau_is_computed_from_them(ranked):
    from scipy.stats import pearsonr, weightedtau

    _, first = ranked
    rows = read_csv(first.run_dir / "ranking.csv")
    tuned = sorted((first.run_dir / "finetune").glob("candidate*/seed1"))
    assert len(tuned) == 3 and all(metrics(d)["strategy"] == "finetune" for d in tuned)
    accuracy = [float(r["finetuned_acc"]) for r in rows]
    assert sorted(accuracy) == sorted(metrics(d)["test/acc"] for d in tuned)
    for score in ("logme", "hscore", "leep", "nce"):
        values = [float(r[score]) for r in rows]
        assert first.metrics[f"{score}/weighted_tau"] == pytest.approx(weightedtau(values, accuracy)[0], abs=1e-12)
        assert first.metrics[f"{score}/pearson"] == pytest.approx(pearsonr(values, accuracy)[0], abs=1e-9)
    assert "weighted Kendall's τ" in (first.run_dir / "ranking.md").read_text()


def test_a_second_ranking_extracts_nothing_and_validates_against_the_first_ones_runs(ranked):
    """Features come from the shared feature cache; validate= matches candidates to runs by their weights."""
    import transferlab

    root, first = ranked
    cache = root / "features"
    before = sorted(p.name for p in cache.iterdir())
    assert len(before) == 3  # one entry per candidate
    again = transferlab.rank(CANDIDATES, "scores=[logme,nce]", f"validate={first.run_dir / 'finetune'}",
                             f"paths.feature_cache={cache}", run_dir=root / "again")
    assert sorted(p.name for p in cache.iterdir()) == before
    old = {r["candidate"]: r for r in read_csv(first.run_dir / "ranking.csv")}
    for row in read_csv(again.run_dir / "ranking.csv"):
        assert float(row["logme"]) == float(old[row["candidate"]]["logme"])  # the same features, the same code
        assert row["finetuned_acc"] == old[row["candidate"]]["finetuned_acc"]
    assert again.metrics["logme/weighted_tau"] == first.metrics["logme/weighted_tau"]


def test_the_ranking_is_a_wandb_run_with_its_table(ranked):
    from pathlib import Path

    from wandb_reader import read_run

    recorded = read_run(ranked[1].run_dir)
    summary, files = recorded["summary"], Path(recorded["file"]).parent / "files"
    table = json.loads((files / summary["ranking.path"]).read_text())
    assert [r[0] for r in table["data"]] == ["source", "short source", "random backbone"]
    assert summary["logme/weighted_tau"] == pytest.approx(ranked[1].metrics["logme/weighted_tau"])
    assert recorded["config"]["scores"] == ["logme", "hscore", "leep", "nce"]


def test_finished_runs_are_candidates_by_their_path(ranked, tmp_path):
    """A run directory stands for the checkpoint it tested; its head is LEEP's source head."""
    import transferlab

    runs = [ranked[1].run_dir / "finetune" / f"candidate{i}" / "seed1" for i in (0, 2)]
    by_path = transferlab.rank(f"candidates=[{runs[0]},{runs[1]}]", "scores=[logme,leep]",
                               f"paths.feature_cache={tmp_path / 'features'}", run_dir=tmp_path / "out")
    rows = read_csv(tmp_path / "out" / "ranking.csv")
    assert [r["candidate"] for r in rows] == [str(r) for r in runs]
    assert all("task 'main' of best.ckpt (5 classes)" in r["source_head"] for r in rows)
    assert {label for label, _ in by_path.metrics["ranking"]["leep"]} == set(map(str, runs))


# --- layers of one model -----------------------------------------------------------------------------

def test_the_layers_of_a_timm_source_are_ranked_and_its_last_is_its_features(ranked, tmp_path):
    import transferlab

    layered = transferlab.rank(f"candidates=[{{name: source, source.overrides: {SOURCE}}}]", "layers=[1,2,3,4,5]",
                               "scores=[logme,hscore]", f"paths.feature_cache={tmp_path / 'features'}",
                               run_dir=tmp_path / "out")
    rows = {r["candidate"]: r for r in read_csv(tmp_path / "out" / "ranking.csv")}
    assert list(rows) == [f"source @ layer {k}" for k in range(1, 6)]
    assert len({r["feature_dim"] for r in rows.values()}) > 1  # stages of different widths
    assert len(list((tmp_path / "features").iterdir())) == 5  # an entry per layer, none shared
    whole = next(r for r in read_csv(ranked[1].run_dir / "ranking.csv") if r["candidate"] == "source")
    for score in ("logme", "hscore"):  # timm's last stage, average-pooled, is what the backbone gives the head
        assert float(rows["source @ layer 5"][score]) == pytest.approx(float(whole[score]), rel=1e-6, abs=1e-9)
    assert len(layered.metrics["ranking"]["logme"]) == 5


def test_the_layers_of_a_text_encoder_are_ranked_and_its_last_is_its_features(tmp_path):
    """A randomly initialised tiny BERT: its last encoder layer, mean-pooled, is what it gives the head."""
    import transferlab

    bert = "model: tiny_bert, " + CORPUS.replace("=", ": ", 1) + ", source: none"
    text = ["data=synthetic_text", "data.num_samples=160", "column=topic", "scores=[logme]",
            f"paths.feature_cache={tmp_path / 'features'}"]
    layered = transferlab.rank(f"candidates=[{{name: bert, {bert}}}]", "layers=[1,2]", *text, run_dir=tmp_path / "layers")
    whole = transferlab.rank(f"candidates=[{{name: bert, {bert}}}, {{name: bert again, {bert}}}]", *text,
                             run_dir=tmp_path / "whole")
    layers, features = dict(layered.metrics["ranking"]["logme"]), dict(whole.metrics["ranking"]["logme"])
    assert set(layers) == {"bert @ layer 1", "bert @ layer 2"} and layers["bert @ layer 1"] != layers["bert @ layer 2"]
    assert features["bert"] == features["bert again"]  # the same seed, the same random weights
    assert layers["bert @ layer 2"] == pytest.approx(features["bert"], rel=1e-6)


# --- bad input: a clear error naming the value, a config error's exit status, no traceback, no ranking ---

def refused(tmp_path, *args):
    result = cli("tl-rank", *args, f"hydra.run.dir={tmp_path / 'out'}", cwd=tmp_path, env={"OMP_NUM_THREADS": "1"})
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert not (tmp_path / "out" / "ranking.csv").exists()
    return result.stderr


def test_one_candidate_is_nothing_to_rank(tmp_path):
    assert "at least two candidates to rank, got 1 (random)" in refused(tmp_path, "candidates=[{name: random, source: none}]")


def test_no_candidates_names_the_setting(tmp_path):
    assert "candidates is required" in refused(tmp_path)


def test_a_candidate_with_data_of_its_own_is_refused(tmp_path):
    err = refused(tmp_path, "candidates=[{source: none}, {source: none, data.classes: [0,1,2,3,4]}]")
    assert "candidates[1] sets data.classes" in err and "tl-rank's own data" in err


def test_leep_on_a_candidate_without_a_source_head_says_which_scores_apply(tmp_path):
    err = refused(tmp_path, f"candidates=[{{name: random, source: none}}, {{name: source, source.overrides: {SOURCE}}}]",
                  "scores=[logme,leep]")
    assert "LEEP needs the source model's own head" in err and "candidate 'random'" in err
    assert "scores for every candidate: hscore, logme" in err


def test_leep_on_an_mlm_source_says_its_head_predicts_tokens(tmp_path):
    mlm = "model: tiny_bert, " + CORPUS.replace("=", ": ", 1) + ", " + MLM_SOURCE.replace("=", ": ", 1)
    random = "model: tiny_bert, " + CORPUS.replace("=", ": ", 1) + ", source: none"
    err = refused(tmp_path, f"candidates=[{{name: mlm, {mlm}}}, {{name: random, {random}}}]", "scores=[leep]",
                  "data=synthetic_text", "data.num_samples=160", "column=topic")
    assert "candidate 'mlm' has none: the tasks of" in err and "predict tokens, not classes" in err


def test_an_unknown_score_names_the_valid_ones(tmp_path):
    err = refused(tmp_path, "candidates=[{source: none}, {name: b, source: none}]", "scores=[logme,logmee]")
    assert "logmee" in err and "hscore, leep, logme, nce" in err


def test_a_missing_candidate_path_is_refused(tmp_path):
    err = refused(tmp_path, f"candidates=[{tmp_path / 'nowhere'},{{source: none}}]")
    assert f"candidate '{tmp_path / 'nowhere'}' does not exist" in err


def test_a_validate_directory_sharing_no_candidate_is_refused(ranked, tmp_path):
    err = refused(tmp_path, "candidates=[{name: a, source: none}, {name: b, source: none, model.name: test_efficientnet}]",
                  "scores=[logme]", f"validate={ranked[1].run_dir / 'finetune'}")
    assert "0 of the 2 candidates have finished runs under" in err and "at least two must match" in err


def test_layers_beyond_the_model_and_source_head_scores_on_layers_are_refused(tmp_path):
    one = f"candidates=[{{name: source, source.overrides: {SOURCE}}}]"
    for case in ("beyond", "leep", "finetune"):
        (tmp_path / case).mkdir()
    assert "has 5 intermediate outputs to score (valid: 1..5), not 6" in refused(tmp_path / "beyond", one,
                                                                                  "layers=[5,6]", "scores=[logme]")
    assert "LEEP reads the source head, the same for every layer" in refused(tmp_path / "leep", one, "layers=[2,3]")
    assert "nothing to validate a layer against" in refused(tmp_path / "finetune", one, "layers=[1,2]",
                                                            "scores=[logme]", "finetune.seeds=[1]")


def test_runs_of_two_settings_of_one_candidate_are_never_averaged(ranked, tmp_path):
    """A copy of a fine-tuned run with another learning rate beside it: the candidate's runs differ in setting."""
    import shutil

    import yaml

    mixed = tmp_path / "mixed"
    shutil.copytree(ranked[1].run_dir / "finetune", mixed)
    other = mixed / "candidate0" / "seed9"
    shutil.copytree(mixed / "candidate0" / "seed1", other)
    config = yaml.safe_load((other / "config.yaml").read_text())
    config["optimizer"]["lr"] *= 10
    (other / "config.yaml").write_text(yaml.safe_dump(config))
    err = refused(tmp_path, CANDIDATES, "scores=[logme]", f"validate={mixed}")
    assert "candidate 'source' has finished runs of 2 different settings" in err


def test_fine_tuning_here_and_validate_together_are_refused(ranked, tmp_path):
    err = refused(tmp_path, CANDIDATES, "scores=[logme]", "finetune.seeds=[1]", f"validate={ranked[1].run_dir}")
    assert "finetune.seeds and validate are both set" in err


def test_fine_tuning_on_other_data_is_refused(tmp_path):
    err = refused(tmp_path, "candidates=[{source: none}, {name: b, source: none}]", "finetune.seeds=[1]",
                  "finetune.overrides=['data.train_per_class=10']")
    assert "finetune.overrides has data.train_per_class=10" in err

