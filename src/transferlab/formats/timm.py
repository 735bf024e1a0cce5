"""``format=timm``: a folder timm opens by itself — ``timm.create_model('local-dir:<folder>', pretrained=True)``
— written by timm's own ``save_for_hf``: ``config.json`` (architecture, model args, ``num_classes``,
``label_names``, ``pretrained_cfg`` with the run's mean, std, input size and crop) and ``model.safetensors``,
the task's linear head as timm's classifier."""
from __future__ import annotations

from pathlib import Path

from transferlab.errors import ConfigError
from transferlab.formats import FORMATS
from transferlab.formats.base import Format
from transferlab.formats.safetensors import max_difference

# The same layers in the same order, only the classifier moved from our head into timm's: float32
# results differ at most by rounding (measured 0); 1e-5 on probabilities leaves room for kernel choice.
TOLERANCE = 1e-5


@FORMATS.register("timm")
class TimmFormat(Format):
    modalities = ("image",)
    one_task = True
    tolerance = TOLERANCE
    usage = "import timm; model = timm.create_model('local-dir:{folder}', pretrained=True).eval()"

    def write(self, deployed, task, folder: Path) -> dict:
        import copy

        import timm
        import torch
        from torch import nn

        loaded = deployed.loaded
        head = loaded.model.heads[task.name]
        linear = [m for m in head if isinstance(m, nn.Linear)]
        if len(linear) != 1:
            raise ConfigError(f"format=timm holds a linear head as timm's classifier; task '{task.name}' has an MLP "
                              f"head (model.head.hidden={loaded.model.family.head.hidden}); valid formats for it: "
                              f"onnx, safetensors")
        model = copy.deepcopy(loaded.model.backbone).eval()
        model.reset_classifier(task.num_classes)
        with torch.no_grad():
            model.get_classifier().weight.copy_(linear[0].weight)
            model.get_classifier().bias.copy_(linear[0].bias)
        pre, size = deployed.preprocessing, getattr(deployed.data, "input_size", None)
        data_config = {"input_size": (3, size, size) if size else tuple(pre["input_size"]), "mean": tuple(pre["mean"]),
                       "std": tuple(pre["std"]), "interpolation": pre.get("interpolation", "bilinear"),
                       "crop_pct": 1.0 if size else pre.get("crop_pct", 0.875)}  # as data/transforms.py evaluates
        timm.models.save_for_hf(model, str(folder), model_config={"label_names": list(task.class_names)},
                                safe_serialization=True, data_config=data_config)
        back = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
        names = back.pretrained_cfg.get("label_names")
        if list(names or []) != list(task.class_names):
            raise ConfigError(f"the timm folder's label_names {names} are not task '{task.name}''s classes")

        class AsTask(nn.Module):  # timm's model, called the way transferlab's network is
            def forward(self, inputs):
                return {task.name: back(inputs["pixel_values"])}
        return {"loaded_with": "timm.create_model('local-dir:...', pretrained=True)",
                "max_abs_diff": max_difference(deployed, AsTask(), task)}
