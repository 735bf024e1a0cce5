"""Parameter-efficient transfer as a user relies on it: LoRA, (IA)³ and BitFit through peft, and the L2-SP and
BSS regularisers, on the default digits transfer (the cached source run).

A LoRA run starts exactly at the source model, trains only its adapters and the head (the wrapped weights stay
bit for bit the source's), and leaves an ordinary ``best.ckpt`` (the adapters merged) that ``tl-eval`` and
``tl-fuse`` read like any run, beside ``adapter/`` in peft's own format; ``last.ckpt`` stays unmerged so an
interrupted run resumes to the uninterrupted run's metrics.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers import FAST, FAST_SOURCE, Interrupt, backbone_state, cli, compose, csv_column, source_checkpoint, text_run, train

import transferlab
from transferlab import run
from transferlab.errors import ConfigError
from transferlab.models.checkpoint import read_checkpoint
from transferlab.plan import resolve

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]
BUFFERS = ("running_mean", "running_var", "num_batches_tracked")  # BatchNorm statistics follow the data (bn=train)
NO_WANDB = "logger.wandb=null"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("peft")
    settings = {
        "finetune": ["strategy=finetune"], "lora": ["strategy=lora"], "lora2": ["strategy=lora", "seed=2"],
        "ia3": ["strategy=ia3"], "bitfit": ["strategy=bitfit"], "probe": ["strategy=linear_probe"],
        "l2sp_off": ["strategy=finetune", "regularizer=l2_sp", "regularizer.weight=0", "regularizer.head_weight=0"],
        "l2sp": ["strategy=finetune", "regularizer=l2_sp", "regularizer.weight=1"],
        "bss": ["strategy=finetune", "regularizer=bss", "regularizer.weight=0.1"],
    }
    return {name: {"dir": root / name, "metrics": train(root / name, *overrides)} for name, overrides in settings.items()}


def params(state: dict) -> dict:
    """Parameters only: BatchNorm statistics are buffers that follow the target data under bn=train."""
    return {k: v for k, v in state.items() if not k.endswith(BUFFERS)}


def heads(ckpt) -> dict:
    return {k: v for k, v in read_checkpoint(ckpt)["state_dict"].items() if k.startswith("model.heads.")}


def source_of(run_dir) -> dict:
    return backbone_state(source_checkpoint(run_dir))


def lora_plan(tmp_path, *overrides):
    plan = resolve(compose(*FAST, "strategy=lora", *overrides, run_dir=tmp_path))
    run.prepare(plan, claim=False)
    return plan


def test_a_lora_model_starts_exactly_at_the_source_model(tmp_path):
    plan = lora_plan(tmp_path)
    _, tasks = run.build_tasks(plan)
    model = run.build_model(plan, tasks).eval()
    images = {"pixel_values": torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(0))}
    before = model(images)["main"]
    plan.strategy.prepare(model)
    names = [n for n, _ in model.backbone.named_parameters()]
    assert any("lora_B" in n for n in names) and any(".base_layer." in n for n in names)
    assert torch.equal(model(images)["main"], before)  # B = 0: the update adds exact zeros
    assert set(model.stage_of) == set(names)  # the stages are read again from the adapted names


def test_default_targets_are_attention_and_mlp_layers_or_ungrouped_convolutions():
    import timm

    from transferlab.strategies import STRATEGIES

    lora = STRATEGIES.parse({"kind": "lora"}, "strategy")
    vit = lora.targets(timm.create_model("test_vit", num_classes=0))
    assert vit and {n.rpartition(".")[2] for n in vit} == {"qkv", "proj", "fc1", "fc2"}
    assert not any(n.startswith("patch_embed") for n in vit)  # a convolution named proj is not the attention's
    convnext = timm.create_model("test_convnext", num_classes=0)
    chosen = lora.targets(convnext)
    modules = dict(convnext.named_modules())
    assert any(isinstance(modules[n], torch.nn.Conv2d) for n in chosen)
    assert all(getattr(modules[n], "groups", 1) == 1 for n in chosen)  # never the depthwise convolutions
    assert any(getattr(m, "groups", 1) > 1 for m in modules.values())
    efficientnet = timm.create_model("efficientnet_b0", num_classes=0)  # squeeze-excite 1x1 convs 4 channels wide
    chosen = lora.targets(efficientnet)
    assert chosen and "blocks.1.0.se.conv_reduce" not in chosen and "blocks.1.0.conv_pw" in chosen


def test_lora_trains_only_its_adapters_and_the_head_and_leaves_an_ordinary_best_checkpoint(runs):
    run_dir = runs["lora"]["dir"]
    source = source_of(run_dir)
    last = backbone_state(run_dir / "checkpoints" / "last.ckpt")  # unmerged, for resume=
    wrapped = {k: v for k, v in last.items() if ".base_layer." in k}
    assert wrapped
    for key, value in wrapped.items():
        assert torch.equal(value, source[key.replace(".base_layer.", ".")]), f"{key} moved"
    for key, value in params(last).items():
        if "lora_" not in key and ".base_layer." not in key:
            assert torch.equal(value, source[key]), f"{key} is not an adapter and moved"
    assert any(v.abs().sum() > 0 for k, v in last.items() if "lora_B" in k), "the adapters did not train"
    best = backbone_state(run_dir / "checkpoints" / "best.ckpt")
    assert set(best) == set(source)  # merged: the source's own keys
    statistics = [k for k in best if k.endswith("running_mean")]  # bn=train: they followed the target data, kept
    assert statistics and any(not torch.equal(best[k], source[k]) for k in statistics)
    config = json.loads((run_dir / "adapter" / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 8
    metrics = runs["lora"]["metrics"]
    lora_params = sum(v.numel() for k, v in last.items() if "lora_" in k)
    head_params = sum(v.numel() for v in heads(run_dir / "checkpoints" / "last.ckpt").values())
    assert metrics["trainable_params"] == lora_params + head_params  # the report's column: the real count


def test_peft_adapts_exactly_the_layers_a_target_pattern_names(tmp_path):
    from peft.tuners.tuners_utils import BaseTunerLayer

    for given, expected in (("'conv1\\.0'", {"conv1.0"}),  # a regular expression, matched whole
                            ("[conv2]", {f"layer{i}.0.conv2" for i in range(1, 5)})):  # a name: its last parts
        plan = lora_plan(tmp_path / str(len(expected)), f"strategy.target_modules={given}")
        model = run.build(plan).module.model
        adapted = {n for n, m in model.backbone.named_modules() if isinstance(m, BaseTunerLayer)}
        assert adapted == expected, given


def test_the_merged_model_gives_the_unmerged_models_outputs(runs, tmp_path):
    for name in ("lora", "ia3"):
        plan = lora_plan(tmp_path / name, f"strategy={name}")
        module = run.build(plan).module.eval()
        module.load_state_dict(read_checkpoint(runs[name]["dir"] / "checkpoints" / "last.ckpt")["state_dict"])
        images = {"pixel_values": torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(1))}
        with torch.no_grad():
            unmerged = module(images)["main"].double()
            plan.strategy.merge(module.model)
            merged = module(images)["main"].double()
        assert not any(plan.strategy.is_adapter(n) for n, _ in module.model.backbone.named_parameters())
        assert (merged - unmerged).abs().max() <= 1e-5 * unmerged.abs().max(), name  # float32 sums in another order


def test_tl_eval_of_the_merged_best_checkpoint_reproduces_the_runs_test_metrics(runs, tmp_path):
    for name in ("lora", "ia3", "l2sp"):  # l2sp: evaluating needs no source weights to pull towards
        metrics = runs[name]["metrics"]
        again = transferlab.evaluate(runs[name]["dir"] / "checkpoints" / "best.ckpt", "logger=csv",
                                     run_dir=tmp_path / name).metrics
        assert again["test/acc"] == metrics["test/acc"], name  # counts of the same predictions
        assert again["test/loss"] == pytest.approx(metrics["test/loss"], rel=1e-6), name


def test_the_saved_adapter_on_the_source_model_in_plain_peft_gives_the_merged_weights(runs):
    import timm
    from peft import LoraConfig, inject_adapter_in_model, set_peft_model_state_dict
    from peft.tuners.tuners_utils import BaseTunerLayer
    from safetensors.torch import load_file

    run_dir = runs["lora"]["dir"]
    model = timm.create_model("test_resnet", num_classes=0)
    model.load_state_dict(source_of(run_dir))
    folder = run_dir / "adapter"
    inject_adapter_in_model(LoraConfig.from_pretrained(str(folder)), model)
    result = set_peft_model_state_dict(model, load_file(str(folder / "adapter_model.safetensors")))
    assert not result.unexpected_keys
    merged = backbone_state(run_dir / "checkpoints" / "best.ckpt")
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, BaseTunerLayer)]
    assert layers
    for name, layer in layers:
        layer.merge()
        weight = layer.get_base_layer().weight.detach().double()
        assert (weight - merged[f"{name}.weight"].double()).abs().max() <= 1e-6 * weight.abs().max(), name


def test_bitfit_moves_only_biases_and_the_head(runs):
    run_dir = runs["bitfit"]["dir"]
    source, best = source_of(run_dir), params(backbone_state(run_dir / "checkpoints" / "best.ckpt"))
    moved = [k for k in best if not torch.equal(best[k], source[k])]
    assert moved and all(k.endswith(".bias") for k in moved), moved
    assert runs["bitfit"]["metrics"]["trainable_params"] == sum(v.numel() for k, v in best.items() if k.endswith(".bias")) \
        + sum(v.numel() for v in heads(run_dir / "checkpoints" / "best.ckpt").values())


def test_ia3_trains_only_its_scaling_vectors(runs):
    run_dir = runs["ia3"]["dir"]
    source, last = source_of(run_dir), params(backbone_state(run_dir / "checkpoints" / "last.ckpt"))
    scales = {k: v for k, v in last.items() if "ia3_l" in k}
    assert scales and any(not torch.equal(v, torch.ones_like(v)) for v in scales.values())
    for key, value in last.items():
        if key not in scales:
            assert torch.equal(value, source[key.replace(".base_layer.", ".")]), f"{key} moved"


def test_l2_sp_with_weight_zero_trains_exactly_like_fine_tuning(runs):
    plain, off = runs["finetune"], runs["l2sp_off"]
    for key in ("test/acc", "test/loss", "val/acc_best"):
        assert off["metrics"][key] == pytest.approx(plain["metrics"][key], rel=1e-6, abs=1e-9), key
    a, b = (backbone_state(run["dir"] / "checkpoints" / "best.ckpt") for run in (plain, off))
    for key in a:
        assert torch.allclose(a[key].double(), b[key].double(), rtol=1e-6, atol=1e-8), key


def test_l2_sp_pulls_the_backbone_towards_the_source_and_replaces_its_weight_decay(runs, tmp_path):
    def distance(name):
        run_dir = runs[name]["dir"]
        source, best = source_of(run_dir), params(backbone_state(run_dir / "checkpoints" / "best.ckpt"))
        return sum(float((best[k].double() - source[k].double()).pow(2).sum()) for k in best) ** 0.5

    assert distance("l2sp") < 0.5 * distance("finetune")
    reg = csv_column(runs["l2sp"]["dir"], "train/reg_loss")
    assert reg and all(v >= 0 for v in reg) and max(reg) > 0
    plan = resolve(compose(*FAST, "regularizer=l2_sp", "optimizer.weight_decay=0.05", run_dir=tmp_path))
    run.prepare(plan, claim=False)
    module = run.build(plan).module
    decay = {g["name"]: g["weight_decay"] for g in module.optimizer_factory(module.model).param_groups}
    assert all(v == 0 for k, v in decay.items() if k.startswith(("backbone", "heads"))), decay
    plan = resolve(compose(*FAST, "strategy=ia3", "optimizer.weight_decay=0.05", run_dir=tmp_path / "ia3"))
    module = run.build(plan).module
    groups = {g["name"]: g for g in module.optimizer_factory(module.model).param_groups}
    scales = [g for name, g in groups.items() if name.startswith("adapters")]
    assert scales and all(g["weight_decay"] == 0 for g in scales)  # (IA)³ scales start at one: no decay to zero
    assert all(any("ia3_l" in n for n, p in module.model.backbone.named_parameters() if p is q)
               for g in scales for q in g["params"])


def test_l2_sp_with_lora_pulls_the_merged_weights_towards_the_source(tmp_path):
    """The adapters have no source value; their update to the weights they wrap is the distance L2-SP measures."""
    plan = lora_plan(tmp_path, "regularizer=l2_sp", "regularizer.weight=0.5", "regularizer.head_weight=0")
    module = run.build(plan).module
    plan.strategy.apply(module.model, 0)
    source = {k: v.detach().clone() for k, v in module.model.backbone.state_dict().items()}
    with torch.no_grad():
        for name, p in module.model.backbone.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.1, generator=torch.Generator().manual_seed(3))
    term = float(module.regularizer(module.model, []))
    plan.strategy.merge(module.model)
    merged = module.model.backbone.state_dict()
    expected = 0.5 / 2 * sum(float((merged[k].double() - source[k.replace(".weight", ".base_layer.weight")].double())
                                   .pow(2).sum()) for k in merged if k.replace(".weight", ".base_layer.weight") in source
                             and k.endswith(".weight") and k not in source)
    assert expected > 0 and term == pytest.approx(expected, rel=1e-4)


def test_bss_penalises_the_smallest_singular_values_of_the_batch_features(runs):
    from transferlab.regularizers import REGULARIZERS

    features = torch.randn(8, 16, generator=torch.Generator().manual_seed(2))
    model = torch.nn.Linear(2, 2)
    term = REGULARIZERS.parse({"kind": "bss", "weight": 0.5, "k": 3}, "regularizer").create(model)
    expected = 0.5 * (np.linalg.svd(features.double().numpy(), compute_uv=False)[-3:] ** 2).sum()
    assert float(term(model, [features])) == pytest.approx(expected, rel=1e-5)
    reg = csv_column(runs["bss"]["dir"], "train/reg_loss")
    assert reg and min(reg) >= 0 and max(reg) > 0


def test_resume_of_an_interrupted_lora_run_ends_with_the_uninterrupted_runs_metrics(runs, tmp_path):
    run_dir = tmp_path / "lora"
    with pytest.raises(RuntimeError, match="interrupted by the test"):
        transferlab.train(*FAST, "strategy=lora", run_dir=run_dir, callbacks=[Interrupt()])
    assert not (run_dir / "adapter").exists()  # nothing merged before the run finished
    resumed = transferlab.train(f"resume={run_dir}", "trainer.enable_progress_bar=false").metrics
    full = runs["lora"]["metrics"]
    for key in ("test/acc", "val/acc_best", "epochs"):
        assert resumed[key] == full[key], key
    assert resumed["test/loss"] == pytest.approx(full["test/loss"], rel=1e-6)


def test_resume_of_an_interrupted_l2_sp_run_pulls_towards_the_source_not_its_last_checkpoint(runs, tmp_path):
    run_dir = tmp_path / "l2sp"
    with pytest.raises(RuntimeError, match="interrupted by the test"):
        transferlab.train(*FAST, "strategy=finetune", "regularizer=l2_sp", "regularizer.weight=1", run_dir=run_dir,
                          callbacks=[Interrupt()])
    resumed = transferlab.train(f"resume={run_dir}", "trainer.enable_progress_bar=false").metrics
    full = runs["l2sp"]["metrics"]
    assert resumed["test/acc"] == full["test/acc"]
    assert resumed["test/loss"] == pytest.approx(full["test/loss"], rel=1e-6)
    assert csv_column(run_dir, "train/reg_loss")[-1] == pytest.approx(csv_column(runs["l2sp"]["dir"], "train/reg_loss")[-1],
                                                                      rel=1e-5)


def test_wise_ft_from_a_probe_to_a_lora_run_and_a_soup_of_lora_runs(runs, tmp_path):
    wise = transferlab.fuse("fusion=wise_ft", f"runs=[{runs['probe']['dir']},{runs['lora']['dir']}]", NO_WANDB,
                            run_dir=tmp_path / "wise")
    import csv

    with open(wise.run_dir / "candidates.csv") as f:
        by_alpha = {float(row["alpha"]): row for row in csv.DictReader(f)}
    assert float(by_alpha[1.0]["test/acc"]) == runs["lora"]["metrics"]["test/acc"]  # alpha = 1 is the LoRA run
    assert float(by_alpha[0.0]["test/acc"]) == runs["probe"]["metrics"]["test/acc"]
    soup = transferlab.fuse("fusion=uniform_soup", f"runs=[{runs['lora']['dir']},{runs['lora2']['dir']}]", NO_WANDB,
                            run_dir=tmp_path / "soup")
    members = [backbone_state(runs[name]["dir"] / "checkpoints" / "best.ckpt") for name in ("lora", "lora2")]
    fused = backbone_state(soup.checkpoint)
    for key in ("conv1.0.weight", "layer4.0.conv2.weight"):  # the merged LoRA weights, averaged
        average = (members[0][key].double() + members[1][key].double()) / 2
        assert torch.allclose(fused[key].double(), average, rtol=1e-6, atol=1e-7), key


@pytest.mark.parametrize("overrides, message", [
    (["strategy=lora", "strategy.target_modules=[attention]"],
     r"'attention' matches no module of the backbone; its Linear/Conv2d layers are named e\.g\. conv1\.0, "),
    (["strategy=lora", "strategy.target_modules='layer1\\.0\\.bn.*'"], r"matches only .*BatchNorm2d.*modules"),
    (["strategy=lora", "strategy.r=64", "strategy.target_modules=[conv1.0]"], r"strategy\.r=64 is larger than 'conv1\.0' can use .*valid: r <= 16"),
    (["strategy=lora", "model.name=test_convnext", "source=none", "model.pretrained=false",
      "strategy.target_modules=[conv_dw]"], r"'stages\.0\.blocks\.0\.conv_dw' is a grouped convolution"),
    (["strategy=lora", "trainer=fsdp"], r"strategy=lora merges its adapters .* trainer\.strategy=fsdp shards it; use trainer=ddp"),
    (["strategy=scratch", "source=none", "regularizer=l2_sp"], r"regularizer=l2_sp pulls the backbone towards the source weights, "
                                                 r"and this run starts from none \(strategy=scratch"),
])
def test_bad_settings_are_refused_before_training(tmp_path, overrides, message):
    fast = [o for o in FAST if not ("source=none" in overrides and o == FAST_SOURCE)]  # no source run at all
    with pytest.raises(ConfigError, match=message):
        transferlab.train(*fast, *overrides, run_dir=tmp_path / "run")
    assert not list(tmp_path.rglob("*.ckpt"))


def test_a_bad_target_exits_non_zero_naming_it(tmp_path):
    proc = cli("tl-train", *FAST, "strategy=lora", "strategy.target_modules=[attention]", f"hydra.run.dir={tmp_path}/r",
               cwd=tmp_path)
    assert proc.returncode != 0 and "'attention' matches no module" in proc.stderr


def test_lora_on_a_text_encoder_adapts_its_attention_and_dense_layers(tmp_path):
    metrics = text_run(tmp_path / "run", "strategy=lora", "strategy.r=4")
    from safetensors.torch import load_file

    adapter = load_file(str(tmp_path / "run" / "adapter" / "adapter_model.safetensors"))  # peft's keys: <layer>.lora_A.weight
    assert {k.split(".lora_")[0].rpartition(".")[2] for k in adapter} == {"query", "key", "value", "dense"}
    again = transferlab.evaluate(tmp_path / "run" / "checkpoints" / "best.ckpt", "logger=csv",
                                 run_dir=tmp_path / "eval").metrics
    assert again["test/acc"] == metrics["test/acc"]
