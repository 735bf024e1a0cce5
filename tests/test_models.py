"""Source models: names, hub weights offline, local weight files, transferlab checkpoints."""
from __future__ import annotations

import time

import pytest
import timm
import torch
from helpers import train
from omegaconf import OmegaConf

from transferlab.errors import CheckpointError, ConfigError
from transferlab.models import FAMILIES, create_model
from transferlab.models.checkpoint import read_checkpoint
from transferlab.models.timm import create_backbone
from transferlab.tasks import Task


def model_cfg(**kw):
    """The typed settings of a ``model`` node, as the plan holds them."""
    return FAMILIES.parse(OmegaConf.create({"kind": "timm", "name": "test_resnet", "pretrained": False, "checkpoint": None,
                                            "drop_rate": 0.0, "drop_path_rate": 0.0, "kwargs": {},
                                            "head": {"hidden": 0, "dropout": 0.0}, **kw}), "model")


def test_unknown_model_name_suggests_close_names():
    with pytest.raises(ConfigError, match=r"unknown model 'resnt18'.*resnet18"):
        create_backbone("resnt18")


def test_pretrained_without_network_fails_fast_and_says_how_to_supply_weights():
    start = time.perf_counter()
    with pytest.raises(ConfigError) as e:
        create_backbone("resnet18", pretrained=True)
    assert time.perf_counter() - start < 15
    assert "model.checkpoint=" in str(e.value) and "resnet18" in str(e.value)


def test_timm_state_dict_and_safetensors_load_into_the_backbone(tmp_path):
    from safetensors.torch import save_file

    source = timm.create_model("test_resnet", num_classes=7)  # with its own classifier, as timm ships it
    torch.save(source.state_dict(), tmp_path / "w.pth")
    save_file(source.state_dict(), str(tmp_path / "w.safetensors"))
    for f in ("w.pth", "w.safetensors"):
        model = create_model(model_cfg(checkpoint=str(tmp_path / f)), [Task("main", num_classes=3)])
        own = model.backbone.state_dict()
        assert all(torch.equal(own[k], v) for k, v in source.state_dict().items() if not k.startswith("fc."))
        assert model.heads["main"][-1].out_features == 3


def test_checkpoint_of_another_architecture_names_the_mismatch(tmp_path):
    torch.save(timm.create_model("test_convnext").state_dict(), tmp_path / "convnext.pth")
    with pytest.raises(CheckpointError, match=r"does not match model 'test_resnet': \d+ of \d+ backbone keys mismatched"):
        create_model(model_cfg(checkpoint=str(tmp_path / "convnext.pth")), [Task("main", num_classes=3)])


def test_missing_and_truncated_checkpoints_are_clear_errors(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        read_checkpoint(tmp_path / "nope.ckpt")
    torch.save(timm.create_model("test_resnet").state_dict(), tmp_path / "w.pth")
    data = (tmp_path / "w.pth").read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="cannot load checkpoint"):
        read_checkpoint(tmp_path / "cut.pth")


def test_transferlab_checkpoint_transfers_backbone_and_replaces_a_head_of_another_class_count(tmp_path):
    train(tmp_path / "src", "source=none")  # digits 5-9: 5 classes
    ckpt = tmp_path / "src" / "checkpoints" / "last.ckpt"
    state = read_checkpoint(ckpt)["state_dict"]
    same = create_model(model_cfg(checkpoint=str(ckpt)), [Task("main", num_classes=5, class_names=list("56789"))])
    other = create_model(model_cfg(checkpoint=str(ckpt)), [Task("main", num_classes=3, class_names=list("abc"))])
    for model in (same, other):
        assert all(torch.equal(v, state[f"model.backbone.{k}"]) for k, v in model.backbone.state_dict().items())
    assert torch.equal(same.heads["main"][-1].weight, state["model.heads.main.1.weight"])  # same task: kept
    assert other.heads["main"][-1].weight.shape == (3, same.backbone.num_features)  # another class count: new head
