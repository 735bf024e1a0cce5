"""Parameter groups and learning-rate scales, checked after real scheduler steps."""
from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from transferlab.models.network import TransferModel, create_head
from transferlab.models.timm import TimmFamily, create_backbone
from transferlab.optim import create_optimizer, create_scheduler


def tiny_model(name="test_vit"):
    backbone = create_backbone(name)
    return TransferModel(backbone, torch.nn.ModuleDict({"main": create_head(backbone.num_features, 3)}),
                         TimmFamily(name=name, pretrained=False))


def opt_cfg(**kw):
    return OmegaConf.create({"kind": "adamw", "lr": 1e-3, "weight_decay": 0.05, "head_lr_mult": 1.0,
                             "layer_decay": None, **kw})


@pytest.mark.parametrize("scheduler", [
    {"kind": "cosine", "warmup_epochs": 1, "min_lr_ratio": 0.0},
    {"kind": "step", "warmup_epochs": 0, "step_epochs": 1, "gamma": 0.5},
    {"kind": "onecycle", "pct_start": 0.3},
    {"kind": "constant", "warmup_epochs": 0},
])
def test_layer_decay_scales_every_layer_after_the_scheduler_steps(scheduler):
    model = tiny_model("test_vit")
    opt = create_optimizer(model, opt_cfg(layer_decay=0.5, head_lr_mult=4.0))
    sched = create_scheduler(opt, OmegaConf.create(scheduler), total_steps=20, steps_per_epoch=4)["scheduler"]
    for _ in range(7):
        opt.step()
        sched.step()
    head_lr = next(g["lr"] for g in opt.param_groups if g["name"].startswith("heads"))
    assert head_lr > 0
    L = model.num_layers
    for g in opt.param_groups:
        if g["name"].startswith("backbone"):
            layer = int(g["name"].split(".")[2].removeprefix("layer"))
            expected = head_lr / 4.0 * 0.5 ** (L - layer)
            assert g["lr"] == pytest.approx(expected, rel=1e-6), g["name"]
    layers = {int(g["name"].split(".")[2].removeprefix("layer")) for g in opt.param_groups if g["name"].startswith("backbone")}
    assert layers == set(range(L)) and L > 3  # test_vit: embeddings, blocks, final norm


def test_no_weight_decay_on_biases_norms_and_position_embeddings():
    model = tiny_model("test_vit")
    opt = create_optimizer(model, opt_cfg())
    names = {id(p): n for n, p in model.named_parameters()}
    for g in opt.param_groups:
        for p in g["params"]:
            n = names[id(p)]
            no_decay = p.ndim <= 1 or n.endswith(("pos_embed", "cls_token"))
            assert g["weight_decay"] == (0.0 if no_decay else 0.05), n


def test_every_parameter_is_in_exactly_one_group_from_the_start():
    model = tiny_model("test_resnet")
    opt = create_optimizer(model, opt_cfg(kind="sgd", momentum=0.9))
    grouped = [id(p) for g in opt.param_groups for p in g["params"]]
    assert sorted(grouped) == sorted(id(p) for p in model.parameters())
    stages = {g["name"].split(".")[1] for g in opt.param_groups if g["name"].startswith("backbone")}
    assert stages == {f"stage{i}" for i in range(model.num_stages)}


def test_stage_scale_from_strategy_is_baked_into_group_lr():
    model = tiny_model("test_resnet")
    opt = create_optimizer(model, opt_cfg(), stage_lr_scale=lambda s: 0.1)
    for g in opt.param_groups:
        assert g["lr"] == pytest.approx(1e-3 * (0.1 if g["name"].startswith("backbone") else 1.0))


def test_unknown_optimizer_and_bad_lr_are_clear_errors():
    from transferlab.errors import ConfigError

    model = tiny_model("test_resnet")
    with pytest.raises(ConfigError, match="unknown optimizer 'lion'.*sgd, adam, adamw"):
        create_optimizer(model, opt_cfg(kind="lion"))
    with pytest.raises(ConfigError, match="optimizer.lr=-1"):
        create_optimizer(model, opt_cfg(lr=-1))
