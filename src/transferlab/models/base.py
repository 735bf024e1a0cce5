"""The backbone contract every model family meets: settings, a backbone, its stages, its inputs.

A family (``models/timm.py``, ``models/hf.py``) is the ``model`` group's settings and the code they
drive: it builds a backbone whose ``encode(inputs)`` turns a batch mapping (``{"pixel_values": ...}``
for images, token ids for text) into pooled features ``[batch, num_features]``, says once how its
parameters group into stages (coarse, for freezing) and layers (fine, for layer decay), and supplies
the input adapter that turns raw items into that mapping. Everything downstream (strategies,
optimizer groups, caching, heads) reads only this. This module imports no torch: the settings are
checked while the plan resolves.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

from transferlab.errors import ConfigError
from transferlab.settings import FRACTION, NON_NEGATIVE_INT, Settings, setting


@dataclass(kw_only=True)
class Head(Settings):
    """The new classification head(s) put on the backbone."""
    hidden: int = setting(0, (NON_NEGATIVE_INT[0], "an integer >= 0 (0 = a linear head, >0 = the hidden width of "
                                                   "an MLP head)"))
    dropout: float = setting(0.0, FRACTION, tune=True)


@dataclass(kw_only=True)
class Family(Settings):
    """How one kind of backbone is built, grouped, fed and preprocessed. One instance per model."""
    kind: str
    name: str = setting(rule=(lambda v: v != "", "a model name of its family"))
    pretrained: bool = False
    checkpoint: str | None = None  # a file to start from (timm state dict, safetensors, a transferlab .ckpt)
    drop_rate: float = setting(0.0, FRACTION, tune=True)  # dropout on the pooled features, before the heads
    head: Head = setting(factory=Head)
    grad_checkpointing: bool = False
    compile: bool = False
    modality: ClassVar[str | None] = None  # its inputs, declared by each family; data of another modality is refused

    @classmethod
    def describe(cls) -> str:
        return f"{super().describe()} ({cls.modality} models)"

    def norm_types(self) -> tuple:
        """Normalisation layers whose statistics freeze with a stage."""
        from torch import nn

        return (nn.modules.batchnorm._BatchNorm,)

    def create_backbone(self, input_size: int | None = None):
        """The backbone, for images of ``input_size`` pixels where the family's inputs are images."""
        raise NotImplementedError

    def feature_size(self, backbone) -> int:
        """The width of ``encode``'s features: what the heads read."""
        return backbone.num_features

    def groups(self, backbone, coarse: bool) -> dict[str, int] | None:
        """Parameter name -> ordinal stage (coarse) or layer (fine), input side first; None = no grouping."""
        return None

    def encode(self, backbone, inputs: Mapping):
        """Pooled features ``[batch, num_features]``."""
        raise NotImplementedError

    def layers(self, backbone) -> int:
        """How many intermediate outputs ``encode_layer`` can pool (1 = nearest the input)."""
        return 0

    def encode_layer(self, backbone, inputs: Mapping, layer: int):
        """Pooled features of intermediate output ``layer`` (1..``layers``): what an earlier layer would
        transfer (tl-rank ``layers=``)."""
        raise ConfigError(f"model '{self.name}' (model.kind={self.kind}) gives no intermediate layers to score")

    def encode_tokens(self, backbone, inputs: Mapping):
        """Features of single tokens (masked-language modelling), for families that read tokens."""
        raise ConfigError(f"model '{self.name}' (model.kind={self.kind}) reads {self.modality}s, which have no "
                          f"tokens; a token-level task (tasks.<name>.kind=mlm) needs a text model")

    def preprocessing(self, backbone) -> dict:
        """What the inputs need to feed this backbone, in plain values a checkpoint can hold."""
        return {}

    def create_transform(self, preprocessing: dict, data, train: bool, tasks=()):
        """raw item -> input mapping, with the data's augmentation when ``train``; ``tasks``: those of
        the stream (a token-level task masks the inputs)."""
        raise NotImplementedError

    def backbone_state(self, backbone, state: dict) -> dict:
        """A foreign state dict of this family's own model, reduced to what the backbone holds."""
        return state

    def no_weight_decay(self, backbone) -> set[str]:
        return set()

    def inputs_key(self) -> str:
        """What decides the model's inputs besides its settings (a tokenizer file may change under the
        same path), computed without training anything: part of a cached source run's key, so new
        inputs never meet weights learnt on old ones."""
        return ""

    def steps(self) -> list:
        """What ``run.prepare`` must do before this model can be built (e.g. train a tokenizer)."""
        return []

    def record(self, backbone) -> dict:
        """Plain values a checkpoint keeps so that ``restore`` can rebuild the backbone and its
        preprocessing without the hub, a cache or a dataset (e.g. a tokenizer, a config)."""
        return {}

    def restore(self, record: dict) -> None:
        """Build from a checkpoint's ``record`` from now on (empty for checkpoints older than records)."""


def require_hub_copy(repo: str, filenames, explain) -> None:
    """Fail in seconds, not after minutes of the hub client's retries, when the hub is unreachable and
    nothing is cached; ``explain(why)`` turns the reason into the family's own message."""
    from huggingface_hub import constants, try_to_load_from_cache

    from transferlab.hub import unreachable

    if any(isinstance(try_to_load_from_cache(repo, f), str) for f in filenames):
        return
    why = unreachable(constants.HF_HUB_OFFLINE)
    if why:
        raise ConfigError(explain(f"{why}, and '{repo}' is not in the local cache"))
