"""Text transfer (model.kind=hf): tiny config-built BERTs with tokenizers trained here, judged by
what their parameters, batches and metrics did in real runs."""
from __future__ import annotations

import json
import os

import pytest
import torch
from helpers import SOURCE, TEXT, StageWatcher, backbone_state, cli, compose, source_checkpoint, text_run
from pytorch_lightning import Callback

from transferlab.plan import resolve

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_linear_probe_keeps_every_backbone_tensor_of_the_mlm_source_bit_identical(tmp_path):
    metrics = text_run(tmp_path, "strategy=linear_probe")
    source = backbone_state(source_checkpoint(tmp_path))
    after = backbone_state(tmp_path / "checkpoints" / "last.ckpt")
    assert after.keys() == source.keys() and any("encoder.layer.1." in k for k in after)
    assert [k for k in source if not torch.equal(source[k], after[k])] == []
    assert metrics["trainable_params"] == 64 * 4 + 4  # the topic head alone


def test_partial_and_gradual_freeze_the_right_encoder_layers(tmp_path):
    partial = StageWatcher()
    text_run(tmp_path / "partial", "strategy=partial", "strategy.freeze_stages=2", callbacks=[partial])
    assert partial.changed == [{2}, {2}]  # embeddings (0) and layer 0 (1) frozen, layer 1 (2) trains
    gradual = StageWatcher()
    text_run(tmp_path / "gradual", "strategy=gradual", "strategy.milestones=[1,2]", "trainer.max_epochs=3",
             callbacks=[gradual])
    assert gradual.changed == [set(), {2}, {1, 2}]
    lp_ft = StageWatcher()
    text_run(tmp_path / "lp_ft", "strategy=lp_ft", "strategy.lp_epochs=1", callbacks=[lp_ft])
    assert lp_ft.changed == [set(), {0, 1, 2}]


def test_num_stages_groups_encoder_layers_and_layer_decay_is_per_layer_after_the_scheduler_steps(tmp_path):
    from transferlab.models import create_model
    from transferlab.optim import create_optimizer, create_scheduler
    from transferlab.tasks import Task

    cfg = compose(*TEXT, "model.config.num_hidden_layers=4", "model.num_stages=3", "optimizer.layer_decay=0.5",
                  "optimizer.head_lr_mult=4.0")
    model = create_model(text_family(cfg), [Task("main", 4)])
    layer_of_block = {int(n.split(".")[2]): s for n, s in model.stage_of.items() if n.startswith("encoder.layer.")}
    assert layer_of_block == {0: 1, 1: 1, 2: 2, 3: 2} and model.stage_of["embeddings.word_embeddings.weight"] == 0
    assert model.num_layers == 5  # embeddings + 4 layers
    opt = create_optimizer(model, cfg.optimizer)
    sched = create_scheduler(opt, cfg.scheduler, total_steps=20, steps_per_epoch=4)["scheduler"]
    for _ in range(7):
        opt.step()
        sched.step()
    head_lr = next(g["lr"] for g in opt.param_groups if g["name"].startswith("heads"))
    for g in opt.param_groups:
        if g["name"].startswith("backbone"):
            layer = int(g["name"].split(".")[2].removeprefix("layer"))
            assert g["lr"] == pytest.approx(head_lr / 4.0 * 0.5 ** (5 - layer), rel=1e-6), g["name"]


class Widths(Callback):
    def __init__(self):
        self.seen = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        inputs, labels = batch["data"]
        self.seen.append((inputs["input_ids"].shape[1], int(inputs["attention_mask"].sum(1).max())))


def test_batches_are_padded_to_their_longest_item_not_max_length(tmp_path):
    widths = Widths()
    text_run(tmp_path, "data.max_length=128", "source=none", callbacks=[widths])
    assert widths.seen and all(width == longest for width, longest in widths.seen)
    assert max(w for w, _ in widths.seen) < 128
    assert len({w for w, _ in widths.seen}) > 1  # batches differ in width


def text_family(cfg):
    """The model family of ``cfg`` with its tokenizer trained (what run.prepare does first)."""
    from transferlab.models import FAMILIES

    family = FAMILIES.parse(cfg.model, "model")
    for step in family.steps():
        step.perform()
    return family


def _inputs(train: bool, *overrides):
    from transferlab.data import KINDS, create_splits

    cfg = compose(*TEXT, "data.augment.enabled=true", *overrides)
    family = text_family(cfg)
    splits = create_splits(KINDS.parse(cfg.data), "topic")
    prep = family.preprocessing(family.create_backbone())
    return family.create_transform(prep, cfg.data, train).bind(splits["train"]), splits["train"]


def test_augmentation_is_reproducible_by_seed_and_off_for_evaluation():
    train_tf, ds = _inputs(True)
    texts = [ds[i][0] for i in range(20)]
    torch.manual_seed(3)
    first = [train_tf(t) for t in texts]
    torch.manual_seed(3)
    assert [train_tf(t) for t in texts] == first
    assert sum(a != b for a, b in zip(first, texts)) >= 15  # every operation at alpha=0.1 changes most texts
    words = set(ds.vocabulary())
    assert all(w in words for text in first for w in text.split())  # insertions/replacements: training words
    eval_tf, _ = _inputs(False)
    assert [eval_tf(t) for t in texts] == texts
    off, _ = _inputs(True, "data.augment.enabled=false")
    assert [off(t) for t in texts] == texts


def test_cached_text_features_equal_uncached(tmp_path):
    cached = text_run(tmp_path / "cached", "strategy=linear_probe", "strategy.cache_features=true")
    plain = text_run(tmp_path / "plain", "strategy=linear_probe", "strategy.cache_features=false")
    for key in ("test/acc", "test/loss", "val/acc_best"):
        assert cached[key] == pytest.approx(plain[key], abs=1e-4), key
    from transferlab.models.checkpoint import read_checkpoint

    heads = [read_checkpoint(tmp_path / r / "checkpoints" / "last.ckpt")["state_dict"]["model.heads.main.1.weight"]
             for r in ("cached", "plain")]
    torch.testing.assert_close(heads[0], heads[1], atol=1e-4, rtol=1e-4)


def test_feature_cache_key_names_the_tokenizer_and_max_length():
    a, _ = _inputs(False)
    b, _ = _inputs(False, "data.max_length=16")
    assert "max_length=32" in repr(a) and "max_length=16" in repr(b) and a.tokenizer_digest in repr(a)


def test_multitask_text_two_label_columns_and_text_plus_mlm_source(tmp_path):
    two = text_run(tmp_path / "two", "source=none", "tasks.main=null", "+tasks.topic.column=topic",
                   "+tasks.sentiment.column=sentiment")
    assert {"test/topic/acc", "test/sentiment/acc"} <= set(two)
    joint = text_run(tmp_path / "joint", "strategy=multitask", "multitask.sampling=min_size")
    assert {"test/main/acc", "test/source/acc"} <= set(joint)


def test_text_files_run_from_csv_and_jsonl(tmp_path):
    """Both formats as a user runs them."""
    from transferlab.data.synthetic_text import generate

    texts, topics, _ = generate(120, "target", 0.5, 0)
    names = ["food", "politics", "science", "sports"]
    import csv

    with open(tmp_path / "reviews.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["review", "topic"])
        w.writerows([t, names[y]] for t, y in zip(texts, topics))
    (tmp_path / "reviews.jsonl").write_text("".join(json.dumps({"review": t, "topic": int(y)}) + "\n"
                                                    for t, y in zip(texts, topics)))
    common = [o for o in TEXT if not o.startswith(("data=", "data.num_samples"))]

    def run(fmt):
        return cli("tl-train", *common, "source=none", "data=text_files", f"data.path={tmp_path / f'reviews.{fmt}'}",
                   "data.text_column=review", "data.max_length=32", "trainer.max_epochs=1",
                   f"paths.run_dir={tmp_path / fmt}", cwd=tmp_path, env={"OMP_NUM_THREADS": "1"})

    for fmt in ("csv", "jsonl"):
        result = run(fmt)
        assert result.returncode == 0, (fmt, result.stderr[-2000:])
        metrics = json.loads((tmp_path / fmt / "metrics.json").read_text())
        assert 0 <= metrics["test/acc"] <= 1 and metrics["data"] == "text_files"
        saved = __import__("yaml").safe_load((tmp_path / fmt / "config.yaml").read_text())
        assert saved["data"]["text_column"] == "review" and saved["data"]["path"].endswith(f"reviews.{fmt}")


def test_trained_wordpiece_is_the_same_in_every_process_and_learns_the_frequent_merges():
    """Two fresh caches (two processes, other hash seeds) must get one vocabulary: the tokenizer decides
    the ids a source is pretrained on, so a new cache must not mean another source and other results."""
    import subprocess
    import sys

    from transferlab.models.wordpiece import learn_vocabulary

    script = ("from transferlab.data.synthetic_text import generate; from transferlab.models.hf import SPECIAL; "
              "from transferlab.models.wordpiece import train_wordpiece; "
              "print(train_wordpiece(generate(400, 'source', 0.5, 0)[0], 300, SPECIAL).to_str())")
    made = [subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                           env={**os.environ, "PYTHONHASHSEED": seed}).stdout for seed in ("1", "2")]
    assert made[0] == made[1] and len(json.loads(made[0])["model"]["vocab"]) == 300
    vocab = learn_vocabulary({"lower": 5, "lowest": 2, "newer": 6, "wider": 3}, 22, ["[UNK]"])
    alphabet = 1 + len({"l", "n", "w", *(f"##{c}" for c in "owerstid")})
    assert vocab[alphabet:alphabet + 3] == ["##er", "##wer", "lo"]  # pairs seen 14, 11 and 7 times
    assert {"lower", "newer", "wider"} <= set(vocab) and "lowest" not in vocab  # 22 tokens: not yet
    assert vocab == learn_vocabulary({"wider": 3, "newer": 6, "lowest": 2, "lower": 5}, 22, ["[UNK]"])


def test_another_tokenizer_under_the_same_path_means_another_cached_source(tmp_path):
    """A cached source run is keyed by its tokenizer's content, not only by the config naming it: weights
    pretrained on one vocabulary must never be reused with another saved over the same file."""
    from transferlab.data.synthetic_text import generate
    from transferlab.models.hf import SPECIAL
    from transferlab.models.wordpiece import train_wordpiece

    texts, path, folders = generate(200, "source", 0.5, 0)[0], tmp_path / "tokenizer.json", []
    for size in (200, 300, 300):
        train_wordpiece(texts, size, SPECIAL).save(str(path))
        plan = resolve(compose(*SOURCE, f"model.tokenizer.path={path}", run_dir=tmp_path))
        folders.append(plan.source_run.folder)
    assert folders[0] != folders[1] and folders[1] == folders[2]


def _one_batch_gradients(tmp_path, *overrides) -> tuple[dict[str, torch.Tensor], bool]:
    """Parameter gradients of one training-mode step (dropout on, same draws) of a fresh tiny BERT, and
    whether its encoder recomputed activations in the backward pass."""
    from transferlab import run

    torch.manual_seed(0)
    parts = run.build(resolve(compose(*TEXT, "source=none", *overrides, run_dir=tmp_path)))
    inputs, labels = next(iter(parts.datamodule.val_dataloader()[0]))
    module = parts.module.train()
    torch.manual_seed(1)
    module._task_losses("data", inputs, labels)[0]["main"].backward()
    grads = {n: p.grad.double() for n, p in module.named_parameters() if p.grad is not None}
    return grads, module.model.backbone.is_gradient_checkpointing


def test_gradient_checkpointing_recomputes_the_same_gradients(tmp_path):
    """A memory switch, not a model change: the same step gives the same gradients, dropout included."""
    (plain, off), (saved, on) = (_one_batch_gradients(tmp_path / "plain"),
                                 _one_batch_gradients(tmp_path / "ckpt", "model.grad_checkpointing=true"))
    assert on and not off and plain.keys() == saved.keys() and any("encoder.layer.1." in n for n in plain)
    for name, grad in plain.items():
        assert (saved[name] - grad).norm() <= 1e-5 * grad.norm() + 1e-12, name


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_pooled_features_ignore_padding(pooling):
    """A sentence's features do not depend on the longer sentences padded beside it in its batch."""
    cfg = compose(*TEXT, f"model.pooling={pooling}")
    family = text_family(cfg)
    backbone = family.create_backbone().eval()
    tokenizer = family.load_tokenizer()
    short, long = "the ka ve report", "officials called the story great after the city met the people this week"
    alone = family.encode(backbone, dict(tokenizer([short], return_tensors="pt")))
    padded = family.encode(backbone, dict(tokenizer([short, long], padding=True, return_tensors="pt")))
    torch.testing.assert_close(padded[0], alone[0], atol=1e-5, rtol=1e-4)
    hidden = backbone(**tokenizer([short], return_tensors="pt")).last_hidden_state
    expected = hidden[0, 0] if pooling == "cls" else hidden[0].mean(0)
    torch.testing.assert_close(alone[0], expected, atol=1e-5, rtol=1e-4)


def test_a_bf16_mixed_text_run_trains_in_bf16_and_keeps_float32_weights(tmp_path):
    """Autocast reaches the encoder (its matmuls run in bf16) while the weights stay float32 to update."""
    import math

    from transferlab.models.checkpoint import read_checkpoint

    class Dtypes(Callback):
        """The output dtype of an encoder projection in every training step."""

        def __init__(self):
            self.seen, self.handle = set(), None

        def on_train_start(self, trainer, module):
            query = module.model.backbone.encoder.layer[0].attention.self.query
            self.handle = query.register_forward_hook(lambda _, __, out: self.seen.add(out.dtype))

        def on_train_end(self, trainer, module):
            self.handle.remove()

    dtypes = Dtypes()
    metrics = text_run(tmp_path, "source=none", "trainer.precision=bf16-mixed", "trainer.max_epochs=1",
                       callbacks=[dtypes])
    assert dtypes.seen == {torch.bfloat16}
    assert math.isfinite(metrics["test/loss"]) and 0 <= metrics["test/acc"] <= 1
    weights = read_checkpoint(tmp_path / "checkpoints" / "last.ckpt")["state_dict"]
    assert {v.dtype for k, v in weights.items() if k.startswith("model.backbone.")} == {torch.float32}
