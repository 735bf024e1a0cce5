"""``format=onnx``: one ``model.onnx`` of the inference graph (images: normalised pixels ``pixel_values``;
texts: ``input_ids`` and ``attention_mask``, and ``token_type_ids`` for a text-pair model) with a dynamic batch axis (and sequence axis for texts), one
output per task (its logits; an ensemble's: log-probabilities, its members averaged inside the graph),
and the class names, preprocessing and source run in the model's metadata. Checked with onnxruntime."""
from __future__ import annotations

import contextlib
import io
import json
import logging
from pathlib import Path

from transferlab.formats import FORMATS
from transferlab.formats.base import Format

log = logging.getLogger(__name__)

# onnxruntime's float32 kernels sum in another order than torch's (and fuse ops): probabilities differ by
# rounding, measured below 1e-6 here; 1e-4 flags a wrong graph (a wrong op moves them by 1e-2 and more)
# without failing a correct export on another CPU.
TOLERANCE = 1e-4


@FORMATS.register("onnx")
class OnnxFormat(Format):
    ensembles = True
    needs = ("onnx", "onnxruntime", "onnxscript")
    tolerance = TOLERANCE
    usage = ("import onnxruntime; session = onnxruntime.InferenceSession('{folder}/model.onnx'); "
             "session.run(None, {{name: array, ...}})  # inputs and class names: session.get_modelmeta()")

    def write(self, deployed, task, folder: Path) -> dict:
        import numpy as np
        import onnx
        import onnxruntime
        import torch
        from torch import nn

        sample = deployed.sample(n=3)
        keys = [k for k in ("pixel_values", "input_ids", "attention_mask", "token_type_ids") if k in sample]
        tasks = [t.name for t in deployed.tasks if not t.token_level]

        class Graph(nn.Module):  # named tensors in, one output per task: what ONNX holds
            def __init__(self, network):
                super().__init__()
                self.network = network

            def forward(self, pixel_values=None, input_ids=None, attention_mask=None, token_type_ids=None):
                given = {"pixel_values": pixel_values, "input_ids": input_ids, "attention_mask": attention_mask,
                         "token_type_ids": token_type_ids}
                outputs = self.network({k: given[k] for k in keys})
                return tuple(outputs[t] for t in tasks)

        batch, length = torch.export.Dim("batch", min=1), torch.export.Dim("sequence", min=2)
        shapes = {k: {0: batch} if k == "pixel_values" else {0: batch, 1: length} for k in keys}
        file = folder / "model.onnx"
        with contextlib.redirect_stdout(io.StringIO()) as said:  # the exporter prints its steps
            torch.onnx.export(Graph(deployed.network).eval(), (), str(file), kwargs={k: sample[k] for k in keys},
                              dynamo=True, input_names=keys, output_names=tasks, dynamic_shapes=shapes, verbose=False,
                              external_data=False)
        log.debug("torch.onnx.export: %s", said.getvalue())
        model = onnx.load(str(file))
        recipe = deployed.input_recipe()
        if deployed.modality == "text":
            recipe["tokenizer"] = "tokenizer.json beside model.onnx"
        meta = {"class_names": json.dumps({t.name: list(t.class_names) for t in deployed.tasks if t.name in tasks}),
                "inputs": json.dumps(keys), "outputs": "log-probabilities" if deployed.combine == "probs" else "logits",
                "preprocessing": json.dumps(recipe), "source": json.dumps(deployed.source, default=str)}
        onnx.helper.set_model_props(model, meta)
        onnx.save(model, str(file))
        if deployed.modality == "text":  # the graph reads token ids: the tokenizer that makes them goes with it
            deployed.preprocessing["tokenizer"].backend_tokenizer.save(str(folder / "tokenizer.json"))
        check = deployed.sample(n=5, seed=1)  # another batch size than the export's: the axis is dynamic
        session = onnxruntime.InferenceSession(str(file), providers=["CPUExecutionProvider"])
        theirs = session.run(tasks, {k: check[k].numpy() for k in keys})
        with torch.inference_mode():
            ours = deployed.network(check)

        def probs(x):
            x = np.asarray(x, dtype=np.float64)
            e = np.exp(x - x.max(-1, keepdims=True))
            return e / e.sum(-1, keepdims=True)
        diff = max(float(np.abs(probs(ours[t].numpy()) - probs(y)).max()) for t, y in zip(tasks, theirs))
        return {"loaded_with": f"onnxruntime {onnxruntime.__version__} (CPUExecutionProvider)", "max_abs_diff": diff,
                "opset": int(model.opset_import[0].version)}

