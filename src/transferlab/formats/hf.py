"""``format=hf``: a text model as a folder transformers opens — ``AutoModelForSequenceClassification``,
``AutoTokenizer`` and ``pipeline('text-classification', ...)`` — with ``trust_remote_code=True``.

transferlab classifies the [CLS] state or a masked mean *without* BERT's pooler (``model.pooling``), which
the stock ``BertForSequenceClassification`` cannot reproduce (it always classifies the pooler's tanh
layer). So the folder ships its model code (``modeling_transferlab.py``, torch and transformers only) and
names it in ``config.json``'s ``auto_map``: exact, for every encoder transferlab trains, at the price of
``trust_remote_code=True`` for whoever loads it."""
from __future__ import annotations

import shutil
from pathlib import Path

from transferlab.formats import FORMATS
from transferlab.formats.base import Format

CODE = "modeling_transferlab.py"
# The same encoder, pooling and head in float32, only loaded through another class: rounding at most
# (measured 0 on CPU); 1e-5 on probabilities leaves room for another kernel choice.
TOLERANCE = 1e-5


@FORMATS.register("hf")
class HfFormat(Format):
    modalities = ("text",)
    one_task = True
    tolerance = TOLERANCE
    usage = ("from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline\n"
             "classify = pipeline('text-classification', model='{folder}', trust_remote_code=True, top_k=None)\n"
             "classify(['a text'], truncation=True)  # every class's probability, cut at the run's max_length\n"
             "model = AutoModelForSequenceClassification.from_pretrained('{folder}', trust_remote_code=True)\n"
             "tokenizer = AutoTokenizer.from_pretrained('{folder}', trust_remote_code=True)")

    def write(self, deployed, task, folder: Path) -> dict:
        import importlib.util

        import torch
        from torch import nn
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        loaded = deployed.loaded
        backbone, head = loaded.model.backbone, loaded.model.heads[task.name]
        shutil.copyfile(Path(__file__).with_name("hf_modeling.py"), folder / CODE)
        spec = importlib.util.spec_from_file_location("modeling_transferlab", folder / CODE)
        code = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(code)
        linear = [m for m in head if isinstance(m, nn.Linear)]
        config = code.TransferlabTextConfig(
            encoder=backbone.config.to_dict(), pooling=loaded.model.family.pooling,
            head_hidden=0 if len(linear) == 1 else linear[0].out_features,
            id2label=dict(enumerate(map(str, task.class_names))),
            label2id={str(c): i for i, c in enumerate(task.class_names)},
            auto_map={"AutoConfig": "modeling_transferlab.TransferlabTextConfig",
                      "AutoModelForSequenceClassification": "modeling_transferlab.TransferlabForSequenceClassification"})
        model = code.TransferlabForSequenceClassification(config).eval()
        state = {f"encoder.{k}": v for k, v in backbone.state_dict().items() if not k.startswith("pooler.")}
        state.update({f"head.{k}": v for k, v in head.state_dict().items()})
        with torch.no_grad():
            model.load_state_dict(state, strict=True)
        model.save_pretrained(str(folder), safe_serialization=True)
        tokenizer = deployed.preprocessing["tokenizer"]
        tokenizer.model_max_length = int(deployed.data.max_length)  # truncation=True cuts where the run did
        tokenizer.save_pretrained(str(folder))

        back = AutoModelForSequenceClassification.from_pretrained(str(folder), trust_remote_code=True).eval()
        inputs = deployed.sample()
        texts = [tokenizer.decode(ids[mask.bool()], skip_special_tokens=True)
                 for ids, mask in zip(inputs["input_ids"], inputs["attention_mask"])]
        ours, _ = deployed.transform().collate([(t, {}) for t in texts])
        theirs = AutoTokenizer.from_pretrained(str(folder), trust_remote_code=True)(
            texts, padding="longest", truncation=True, return_tensors="pt")
        if not torch.equal(ours["input_ids"], theirs["input_ids"]):
            from transferlab.errors import ConfigError

            raise ConfigError("the exported tokenizer gives other token ids than the run's; nothing was exported")
        with torch.inference_mode():
            expected = deployed.network(ours)[task.name].double().softmax(-1)
            got = back(**theirs).logits.double().softmax(-1)
        return {"loaded_with": "transformers AutoModelForSequenceClassification + AutoTokenizer "
                               "(trust_remote_code=True)", "max_abs_diff": float((expected - got).abs().max())}
