"""data=hf_datasets: Hugging Face ``datasets`` read through text_files' rows-to-texts and splitting code,
from files the tests write (a save_to_disk directory, json/csv through the builders), never the hub."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import tempfile

import pytest
from helpers import BIN, CORPUS, ONE_THREAD, cli, compose

# datasets' builders write arrow caches: a private one, set before datasets is imported.
os.environ["HF_DATASETS_CACHE"] = tempfile.mkdtemp(prefix="hf-datasets-cache-")

NAMES = ["sports", "food", "science", "politics"]  # ClassLabel order, deliberately not sorted
RUN = ["model=tiny_bert", CORPUS, "source=none", "logger=csv", "trainer.enable_progress_bar=false",
       "trainer.max_epochs=1", "data.batch_size=16", "data.max_length=32", "tasks.main.column=topic"]


def reviews(n: int = 120):
    from transferlab.data.synthetic_text import TOPICS, generate

    texts, topics, _ = generate(n, "target", 0.5, 0)
    return texts, [TOPICS[y] for y in topics]


def save_dataset_dict(path) -> None:
    """train and test splits (no validation), topic a ClassLabel, plus an id column that is no label."""
    import datasets

    texts, topics = reviews()
    features = datasets.Features({"review": datasets.Value("string"), "topic": datasets.ClassLabel(names=NAMES),
                                  "idx": datasets.Value("int64")})

    def split(lo, hi):
        return datasets.Dataset.from_dict({"review": texts[lo:hi], "topic": [NAMES.index(t) for t in topics[lo:hi]],
                                           "idx": list(range(lo, hi))}, features=features)

    datasets.DatasetDict(train=split(0, 96), test=split(96, 120)).save_to_disk(str(path))


def splits_of(*overrides):
    from transferlab.data import create_splits

    return create_splits(compose("model=tiny_bert", "tasks.main.column=topic", *overrides).data, "topic")


def test_a_save_to_disk_directory_keeps_its_splits_and_classlabel_names(tmp_path):
    save_dataset_dict(tmp_path / "dd")
    splits = splits_of("data=hf_datasets", f"data.path={tmp_path / 'dd'}", "data.text_column=review")
    assert {s: ds.classes for s, ds in splits.items()} == {s: {"topic": NAMES} for s in ("train", "val", "test")}
    assert (len(splits["train"]) + len(splits["val"]), len(splits["test"])) == (96, 24)  # val carved from train
    texts, topics = reviews()
    test = splits["test"]
    assert [test[i] for i in range(24)] == [(t, {"topic": NAMES.index(y)}) for t, y in zip(texts[96:], topics[96:])]
    picked = splits_of("data=hf_datasets", f"data.path={tmp_path / 'dd'}", "data.text_column=review",
                       "data.classes=[food,sports]")["test"]
    assert picked.classes == {"topic": ["food", "sports"]}
    kept = ["food", "sports"]
    assert [picked[i] for i in range(len(picked))] == [(t, {"topic": kept.index(y)})
                                                       for t, y in zip(texts[96:], topics[96:]) if y in kept]


def test_an_unlabelled_split_is_an_error_naming_it_and_splits_test_null_carves_test_instead(tmp_path):
    """glue's test splits hold label -1 (hidden labels): not a class."""
    import datasets

    from transferlab.errors import DataError

    texts, topics = reviews(60)
    features = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=NAMES)})
    labels = [NAMES.index(t) for t in topics[:50]]
    datasets.DatasetDict(train=datasets.Dataset.from_dict({"text": texts[:50], "label": labels}, features),
                         test=datasets.Dataset.from_dict({"text": texts[50:], "label": [-1] * 10}, features),
                         ).save_to_disk(tmp_path / "dd")
    with pytest.raises(DataError) as e:
        splits_of("data=hf_datasets", f"data.path={tmp_path / 'dd'}")
    assert f"{tmp_path / 'dd'} test: row 1 has no label in column 'label' (-1)" in str(e.value)
    assert "data.splits.test=null" in str(e.value)
    carved = splits_of("data=hf_datasets", f"data.path={tmp_path / 'dd'}", "data.splits.test=null")
    assert sum(len(ds) for ds in carved.values()) == 50


def test_json_and_csv_builders_give_the_same_splits_as_text_files(tmp_path):
    texts, topics = reviews()
    (tmp_path / "reviews.jsonl").write_text("".join(json.dumps({"review": t, "topic": y}) + "\n"
                                                    for t, y in zip(texts, topics)))
    with open(tmp_path / "reviews.csv", "w", newline="") as f:
        csv.writer(f).writerows([("review", "topic"), *zip(texts, topics)])
    for builder, file in (("json", "reviews.jsonl"), ("csv", "reviews.csv")):
        expected = splits_of("data=text_files", f"data.path={tmp_path / file}", "data.text_column=review")
        got = splits_of("data=hf_datasets", f"data.path={builder}", f"data.data_files={tmp_path / file}",
                        "data.text_column=review")
        assert set(got) == set(expected) == {"train", "val", "test"}
        for s in expected:
            assert got[s].classes == expected[s].classes == {"topic": sorted(NAMES)}
            assert [got[s][i] for i in range(len(got[s]))] == [expected[s][i] for i in range(len(expected[s]))], s
            assert len(got[s]) > 0


def test_a_bad_text_column_names_the_value_and_the_datasets_columns(tmp_path):
    from transferlab.errors import DataError

    save_dataset_dict(tmp_path / "dd")
    with pytest.raises(DataError) as e:
        splits_of("data=hf_datasets", f"data.path={tmp_path / 'dd'}", "data.text_column=body")
    assert "data.text_column='body'" in str(e.value) and "its columns: review, topic, idx" in str(e.value)


@pytest.fixture(scope="module")
def processes(tmp_path_factory):
    """The slow cases: a run on a save_to_disk directory and a hub name offline (what conftest sets), through
    tl-train's main() in this process; and a hub name with offline mode unset but a hub that refuses
    connections: the data layer alone, in a process of its own, because the hub client reads that
    environment once per process."""
    root = tmp_path_factory.mktemp("hf_datasets")
    save_dataset_dict(root / "dd")
    online = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")}
    script = ("import sys; from transferlab.config import compose_config; "
              "from transferlab.data import create_splits; from transferlab.errors import DataError\n"
              "try: create_splits(compose_config(['data=hf_datasets', 'data.path=imdb']).data)\n"
              "except DataError as e: sys.exit(f'error: {e}')")
    unreachable = subprocess.Popen([str(BIN / "python"), "-c", script], cwd=root, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True,  # port 9 (discard): refused at once
                                   env={**online, "HF_ENDPOINT": "http://127.0.0.1:9", **ONE_THREAD})
    done = {"save_to_disk": cli("tl-train", *RUN, "data=hf_datasets", f"data.path={root / 'dd'}",
                                "data.text_column=review", f"paths.run_dir={root / 'save_to_disk'}", cwd=root,
                                env=ONE_THREAD),
            "offline": cli("tl-train", *RUN, "data=hf_datasets", "data.path=imdb", f"paths.run_dir={root / 'offline'}",
                           cwd=root, env=ONE_THREAD)}
    out, err = unreachable.communicate(timeout=300)
    done["unreachable"] = subprocess.CompletedProcess(unreachable.args, unreachable.returncode, out, err)
    return root, done


@pytest.mark.slow
def test_a_run_on_a_save_to_disk_directory_records_the_classlabel_names(processes):
    root, done = processes
    assert done["save_to_disk"].returncode == 0, done["save_to_disk"].stderr[-3000:]
    metrics = json.loads((root / "save_to_disk" / "metrics.json").read_text())
    assert metrics["data"] == "hf_datasets" and 0 <= metrics["test/acc"] <= 1
    import torch

    ckpt = torch.load(root / "save_to_disk" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert [t["class_names"] for t in ckpt["hyper_parameters"]["tasks"]] == [NAMES]


@pytest.mark.slow
@pytest.mark.parametrize("case,reason", [("offline", "offline mode is set"),
                                         ("unreachable", "the hub (127.0.0.1) is unreachable")])
def test_a_hub_name_not_in_the_cache_fails_at_once_with_one_clear_error(processes, case, reason):
    """Without the hub client's half minute of retries, and saying how to supply the data instead."""
    root, done = processes
    err = done[case].stderr
    assert done[case].returncode != 0 and "Traceback" not in err and "Retrying" not in err, err[-3000:]
    assert err.count("error:") == 1 and "data.path=imdb could not be reached" in err and reason in err, err
    assert "save_to_disk" in err and "data=text_files" in err, err
    assert not (root / case / "metrics.json").exists()
