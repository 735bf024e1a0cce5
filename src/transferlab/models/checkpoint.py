"""Reading checkpoints: tensors only (``weights_only``), whoever wrote them; source weights for a new
model; and a transferlab model rebuilt from its checkpoint alone (``from_checkpoint``), the one
loader ``tl-eval``, fusion and every later command use.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from transferlab.errors import CheckpointError, ConfigError

log = logging.getLogger(__name__)


def read_checkpoint(path: str | os.PathLike) -> dict:
    """A foreign file, tensors and plain containers only (``weights_only``): nothing in it can run code.

    Returns ``{"state_dict": {name: tensor}, ...}`` for safetensors, plain torch state dicts and
    Lightning checkpoints alike (a Lightning checkpoint keeps its other entries, e.g. hyper_parameters).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint '{path}' does not exist (model.checkpoint / ckpt_path must name a "
                              f".ckpt, .pth, .bin or .safetensors file)")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return {"state_dict": load_file(str(path))}
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any failure to parse means the file is unusable
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"cannot load checkpoint '{path}': {first}. Only tensor files are accepted "
                              f"(loaded with weights_only=True); a truncated file or a pickle of other "
                              f"objects is refused.") from None
    if isinstance(ckpt, dict):
        for key in ("state_dict", "model", "state_dict_ema"):
            if isinstance(ckpt.get(key), dict):
                ckpt = dict(ckpt, state_dict=ckpt[key])
                break
        else:
            ckpt = {"state_dict": ckpt}
    state = ckpt.get("state_dict") if isinstance(ckpt, dict) else None
    if not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"checkpoint '{path}' holds no state dict of tensors")
    return ckpt


def load_source_weights(model, path, tasks) -> None:
    """Load a backbone, and the heads of tasks with the same name, class count and class names, from a
    transferlab or timm checkpoint. Other heads stay freshly initialised (the usual transfer case)."""
    ckpt = read_checkpoint(path)
    state = ckpt["state_dict"]
    prefix = "model.backbone." if any(k.startswith("model.backbone.") for k in state) else ""
    backbone_state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    if not prefix:  # a state dict of the family's own model (e.g. timm's, with its classifier)
        backbone_state = model.family.backbone_state(model.backbone, backbone_state)
    own = model.backbone.state_dict()
    missing = sorted(set(own) - set(backbone_state))
    unexpected = sorted(set(backbone_state) - set(own))
    wrong_shape = sorted(k for k in set(own) & set(backbone_state) if own[k].shape != backbone_state[k].shape)
    bad = missing + unexpected + wrong_shape
    if bad:
        name = model.family.name or type(model.backbone).__name__
        shown = "; ".join([f"missing {k}" for k in missing[:3]] + [f"unexpected {k}" for k in unexpected[:3]] +
                          [f"{k}: {tuple(backbone_state[k].shape)} vs {tuple(own[k].shape)}" for k in wrong_shape[:3]])
        raise CheckpointError(f"checkpoint '{path}' does not match model '{name}': {len(bad)} of {len(own)} backbone "
                              f"keys mismatched ({len(missing)} missing, {len(unexpected)} unexpected, "
                              f"{len(wrong_shape)} of another shape), e.g. {shown}. Choose the model the checkpoint "
                              f"was trained with (model.name=...).")
    model.backbone.load_state_dict(backbone_state)
    from transferlab.runs import upgrade_tasks

    source_classes = {t["name"]: t.get("class_names")
                      for t in upgrade_tasks(ckpt.get("hyper_parameters", {}).get("tasks", []))}
    for task in tasks:
        head = model.heads[task.name]
        head_state = {k[len(f"model.heads.{task.name}."):]: v for k, v in state.items()
                      if k.startswith(f"model.heads.{task.name}.")}
        own_head = head.state_dict()
        same_shape = head_state.keys() == own_head.keys() and all(v.shape == own_head[k].shape for k, v in head_state.items())
        same_labels = source_classes.get(task.name) in (None, task.class_names)
        if same_shape and same_labels:
            head.load_state_dict(head_state)
            log.info("head '%s' loaded from %s", task.name, path)
        else:
            why = "another class count" if head_state and not same_shape else (
                "other classes" if head_state else "no head of this task")
            log.info("head '%s' newly initialised: the source has %s", task.name, why)


@dataclass
class Loaded:
    """A transferlab checkpoint, rebuilt: its model (weights loaded), tasks with their class names, the
    preprocessing its inputs need, and the run's config (upgraded to this version)."""
    path: Path
    model: object  # TransferModel
    tasks: list
    preprocessing: dict
    config: dict
    state_dict: dict  # the module's whole state (metrics, loss weighting, best score) as saved
    hparams: dict

    @property
    def fusion(self) -> dict | None:
        return self.hparams.get("fusion")


def saved_plan(path) -> tuple[dict, dict]:
    """(config, hyper_parameters) of a transferlab checkpoint, the config checked and upgraded."""
    from transferlab.runs import check_saved, require_complete, upgrade

    ckpt = read_checkpoint(path)
    hparams = ckpt.get("hyper_parameters") or {}
    config = hparams.get("config")
    exported = _export_record(path)
    if exported:  # tl-export format=safetensors: the tensors, and beside them what rebuilds the model
        config, hparams, ckpt = exported["config"], dict(exported["hyper_parameters"], config=exported["config"]), \
            dict(ckpt, **{"pytorch-lightning_version": None})
    if not config or "pytorch-lightning_version" not in ckpt:
        raise ConfigError(f"'{path}' is not a transferlab checkpoint (it holds no run config); to start a run from "
                          f"foreign weights use tl-train model.checkpoint=...")
    check_saved(config, f"the config inside '{path}'")
    config = upgrade(config, f"the config inside '{path}'")
    require_complete(config, f"the config inside '{path}'")  # the model is rebuilt from it alone
    return config, {**hparams, "_state_dict": ckpt["state_dict"]}


def _export_record(path) -> dict | None:
    """The record ``tl-export`` wrote beside an exported ``.safetensors`` (None for any other file)."""
    import json

    from transferlab.runs import EXPORTED

    record = Path(path).with_name(EXPORTED)
    if Path(path).suffix != ".safetensors" or not record.is_file():
        return None
    content = json.loads(record.read_text())
    return content if content.get("config") and content.get("hyper_parameters") else None


def from_checkpoint(path) -> Loaded:
    """The network, its tasks and its preprocessing from a transferlab checkpoint, without any dataset:
    the family builds the backbone from the saved settings (no source run, no hub weights), the heads
    come from the saved tasks, every tensor from the file."""
    from transferlab.models import FAMILIES
    from transferlab.models.network import build_network
    from transferlab.runs import upgrade_tasks
    from transferlab.tasks import Task

    config, hparams = saved_plan(path)
    state = hparams.pop("_state_dict")
    model_cfg = {**config["model"], "checkpoint": None, "pretrained": False}
    family = FAMILIES.parse(model_cfg, "model")
    family.restore(hparams.get("family") or {})
    tasks = [Task.from_record(t) for t in upgrade_tasks(hparams.get("tasks", []))]
    model = build_network(family, tasks, (config.get("data") or {}).get("input_size"))
    own = {k[len("model."):]: v for k, v in state.items() if k.startswith("model.")}
    missing, unexpected = model.load_state_dict(own, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"checkpoint '{path}' does not fit the model built from its config ({len(missing)} "
                              f"missing, {len(unexpected)} unexpected keys, e.g. {(missing or unexpected)[0]})")
    preprocessing = family.preprocessing(model.backbone)
    return Loaded(Path(path), model, tasks, preprocessing, config, state, hparams)
