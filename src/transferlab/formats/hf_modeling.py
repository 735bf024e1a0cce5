"""The model code a ``format=hf`` folder ships (copied in as ``modeling_transferlab.py``): transferlab's text
classifier for transformers' Auto classes — the encoder, transferlab's pooling (the [CLS] state or a
masked mean, never BERT's pooler) and its head. It imports only torch and transformers: whoever loads
the folder (``trust_remote_code=True``) needs no transferlab."""
import torch
from torch import nn
from transformers import AutoConfig, AutoModel, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import SequenceClassifierOutput


class TransferlabTextConfig(PretrainedConfig):
    model_type = "transferlab_text"

    def __init__(self, encoder=None, pooling="cls", head_hidden=0, **kwargs):
        super().__init__(**kwargs)
        self.encoder = dict(encoder or {})  # the encoder's own config (model_type and its keys)
        self.pooling = pooling  # cls | mean
        self.head_hidden = head_hidden  # 0 = a linear head, else the hidden width of an MLP head


class _FirstToken(nn.Module):  # stands in for the encoder's pooler, whose output is never used
    def forward(self, hidden_states, *args, **kwargs):
        return hidden_states[:, 0]


class TransferlabForSequenceClassification(PreTrainedModel):
    config_class = TransferlabTextConfig
    base_model_prefix = "encoder"

    def __init__(self, config):
        super().__init__(config)
        spec = dict(config.encoder)
        self.encoder = AutoModel.from_config(AutoConfig.for_model(spec.pop("model_type"), **spec))
        if getattr(self.encoder, "pooler", None) is not None:
            self.encoder.pooler = _FirstToken()
        width, classes, hidden = self.encoder.config.hidden_size, config.num_labels, config.head_hidden
        self.head = (nn.Sequential(nn.Dropout(0.0), nn.Linear(width, classes)) if not hidden else
                     nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Dropout(0.0), nn.Linear(hidden, classes)))
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, labels=None, **kwargs):
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        fed = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            fed["token_type_ids"] = token_type_ids
        hidden = self.encoder(**fed).last_hidden_state
        if self.config.pooling == "mean":  # over real tokens only: padding never moves a sentence's features
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
        else:
            pooled = hidden[:, 0]
        logits = self.head(pooled)
        loss = nn.functional.cross_entropy(logits, labels) if labels is not None else None
        return SequenceClassifierOutput(loss=loss, logits=logits)
