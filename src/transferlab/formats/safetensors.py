"""``format=safetensors``: the model's tensors in one ``model.safetensors``, beside the export's record
(``transferlab.json``: architecture, tasks, class names, preprocessing), which ``tl-predict ckpt_path=`` and
``tl-eval`` rebuild the model from, and which ``model.checkpoint=`` starts a new run from."""
from __future__ import annotations

from pathlib import Path

from transferlab.formats import FORMATS
from transferlab.formats.base import Format

WEIGHTS = "model.safetensors"


@FORMATS.register("safetensors")
class SafetensorsFormat(Format):
    tolerance = 0.0  # the same tensors in the same network: nothing may differ
    usage = ("tl-predict ckpt_path={folder}/model.safetensors inputs=...   # or: tl-train model.checkpoint={folder}/"
             "model.safetensors (fine-tune from it); safetensors.torch.load_file('{folder}/model.safetensors')")

    def write(self, deployed, task, folder: Path) -> dict:
        from safetensors.torch import save_file

        loaded = deployed.loaded
        state = {f"model.{k}": v.detach().contiguous() for k, v in loaded.model.state_dict().items()}
        save_file(state, str(folder / WEIGHTS), metadata={"format": "pt"})
        from transferlab.models import from_checkpoint  # back through the record the export wrote beside it

        return {"loaded_with": "transferlab.models.from_checkpoint (what tl-predict ckpt_path= and model.checkpoint= "
                               "read)",
                "max_abs_diff": max_difference(deployed, from_checkpoint(folder / WEIGHTS).model)}


def max_difference(deployed, network, task=None) -> float:
    """The largest |probability difference| between ``deployed``'s network and ``network`` (same call)
    on ``deployed.sample()``, over ``task`` or every task."""
    import torch

    inputs = deployed.sample()
    with torch.inference_mode():
        ours, theirs = deployed.network(inputs), network.eval()(inputs)
    names = [task.name] if task is not None else list(ours)
    return max(float((ours[n].double().softmax(-1) - theirs[n].double().softmax(-1)).abs().max()) for n in names)
