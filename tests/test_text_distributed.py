"""A 2-process DDP text run (Lightning's own launcher, CPU, gloo) trains the very tiny BERT one process does.

The exactness argument of tests/test_distributed.py, for text: the 32 few-shot training sentences
are one global batch per step (1 x 32 = 2 ranks x 16); augmentation and dropout are off (each rank
draws its own random numbers); val and test have 40 sentences each (data.num_samples=196; an even
count, so the DistributedSampler pads no sample). Dynamic padding differs between the ranks' half
batches and the whole batch, but padded positions are masked out of attention and pooling, so only
float summation order differs. LP-FT with one probing epoch
(the backbone starts receiving gradients mid-run) is the DDP trap checked.
"""
from __future__ import annotations

import pytest
from helpers import METRIC_ABS, WEIGHT_ATOL, checkpoint, clean_env, csv_column, metrics, tl_train

pytestmark = pytest.mark.slow  # two tl-train subprocesses, three processes in all (~80 s on 2 busy cores)

WORLD, TRAIN_TEXTS, EPOCHS = 2, 32, 2


def overrides(*extra, batch_size):
    return ["model=tiny_bert", "model.tokenizer.train_on=['data=synthetic_text','data.domain=source',"
            "'data.num_samples=300']", "++model.config.hidden_dropout_prob=0.0",
            "++model.config.attention_probs_dropout_prob=0.0", "data=synthetic_text", "data.num_samples=196",
            "data.train_per_class=8", f"data.batch_size={batch_size}", "data.augment.enabled=false",
            "tasks.main.column=topic", "source=none", "strategy=lp_ft", "strategy.lp_epochs=1", "logger=csv",
            f"trainer.max_epochs={EPOCHS}", "trainer.enable_progress_bar=false", *extra]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("text_ddp")
    # DDP first, so the distributed run is the one that trains the tokenizer (a corpus no other test uses):
    # the trainer differs between processes, so every rank and the single process must read one file
    tl_train(*overrides("trainer=ddp", "trainer.accelerator=cpu", f"trainer.devices={WORLD}",
                        batch_size=TRAIN_TEXTS // WORLD), f"hydra.run.dir={cwd / 'ddp'}", cwd=cwd, env=clean_env())
    tl_train(*overrides("trainer=cpu", batch_size=TRAIN_TEXTS), f"hydra.run.dir={cwd / 'single'}", cwd=cwd)
    return cwd / "single", cwd / "ddp"


def test_ddp_text_run_trains_the_same_model_as_one_process(runs):
    single, ddp = runs
    got, want = metrics(ddp), metrics(single)
    for key in ("test/acc", "test/f1", "val/acc_best"):
        assert got[key] == pytest.approx(want[key], abs=METRIC_ABS), key
    assert got["test/loss"] == pytest.approx(want["test/loss"], abs=1e-5)
    assert got["trainable_params"] == want["trainable_params"] and got["epochs"] == want["epochs"] == EPOCHS
    # one logger row per validation epoch, not one per rank
    assert csv_column(ddp, "val/acc") == pytest.approx(csv_column(single, "val/acc"), abs=METRIC_ABS)
    assert len(csv_column(ddp, "val/acc")) == EPOCHS
    mine, one = checkpoint(ddp), checkpoint(single)
    assert mine["global_step"] == one["global_step"] == EPOCHS  # each rank stepped over its half: sharded
    assert mine["state_dict"].keys() == one["state_dict"].keys()
    worst = max(((mine["state_dict"][k].double() - v.double()).abs().max().item(), k)
                for k, v in one["state_dict"].items())
    assert worst[0] <= WEIGHT_ATOL, f"weights differ from the single-process run's by {worst[0]:.2e} ({worst[1]})"
