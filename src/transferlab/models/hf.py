"""The hf family: Hugging Face transformers text encoders (``model.family=hf``): BERT and its kin.

A backbone comes from the hub by name (``model.pretrained=true``), from a ``save_pretrained``
directory (``model.path``) or from a config alone (``model.config``: random init, how tests and the
offline default build tiny BERTs). Its tokenizer comes with it (``AutoTokenizer``), from a file
(``model.tokenizer.path``), or is trained here with the ``tokenizers`` library on a corpus
(``model.tokenizer.train_on``) and cached by its settings. Stages: the embeddings, then the encoder
layers grouped into ``model.num_stages``; layers (layer decay): the embeddings, then each encoder
layer. ``transformers`` is imported only when a text model is built.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import re
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from transferlab.errors import ConfigError, suggest
from transferlab.models import wordpiece
from transferlab.models.base import Family, require_hub_copy

log = logging.getLogger(__name__)

# Hub names offered when a name is unknown (with the repositories in the local cache).
KNOWN = ["bert-base-uncased", "bert-base-cased", "bert-large-uncased", "distilbert-base-uncased", "roberta-base",
         "distilroberta-base", "albert-base-v2", "microsoft/deberta-v3-base", "google/electra-small-discriminator",
         "sentence-transformers/all-MiniLM-L6-v2", "prajjwal1/bert-tiny"]
_LAYER = re.compile(r"(?:^|\.)(?:layer|layers|block|blocks|h)\.(\d+)\.")
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


class HfFamily(Family):
    name = "hf"
    norm_types = ()  # LayerNorm keeps no running statistics: nothing freezes with a stage but its weights

    def __init__(self, cfg):
        super().__init__(cfg)
        self._tokenizer = None
        if cfg.get("channels_last"):
            raise ConfigError("model.channels_last=true is an image memory layout; text models (model.family=hf) "
                              "have no channels: remove it")
        if cfg.get("pooling", "cls") not in POOLING:
            raise ConfigError(f"model.pooling={cfg.get('pooling')!r} is not a pooling; valid: {', '.join(POOLING)}")

    # --- the backbone -------------------------------------------------------------------------
    def create_backbone(self) -> nn.Module:
        c = self.cfg
        from transformers import AutoConfig, AutoModel

        if c.get("path"):
            path = _local_dir(c.path, "model.path")
            backbone = _load(lambda: AutoModel.from_pretrained(str(path)), f"model.path={c.path}")
        elif c.get("config"):
            spec = dict(c.config)
            model_type = spec.pop("model_type", "bert")
            try:
                backbone = AutoModel.from_config(AutoConfig.for_model(model_type, **spec))
            except ValueError as e:
                raise ConfigError(f"model.config is not a valid transformers config: {str(e).splitlines()[0]}") from None
        elif c.get("pretrained"):
            check_hub(c.name)
            backbone = _load(lambda: AutoModel.from_pretrained(c.name), f"model.name={c.name}", hub=c.name)
        else:
            check_hub(c.name)
            config = _load(lambda: AutoConfig.from_pretrained(c.name), f"model.name={c.name}", hub=c.name)
            backbone = AutoModel.from_config(config)
        if getattr(backbone, "pooler", None) is not None:
            backbone.pooler = None  # pooling is ours (model.pooling); an unused pooler would stall DDP
        backbone.num_features = backbone.config.hidden_size
        if c.get("grad_checkpointing"):
            if not backbone.supports_gradient_checkpointing:
                raise ConfigError(f"model '{c.name}' does not support model.grad_checkpointing=true")
            backbone.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        return backbone

    def groups(self, backbone, coarse):
        """Embeddings = 0, encoder layer i = i + 1, anything after the layers (final norms) = the last."""
        names = [n for n, _ in backbone.named_parameters()]
        layer = {n: int(m.group(1)) + 1 for n in names if (m := _LAYER.search(n))}
        depth = max(layer.values(), default=0)
        fine = {n: layer.get(n, 0 if "embed" in n else depth) for n in names}
        if not coarse:
            return fine
        stages = self.cfg.get("num_stages") or depth + 1
        if not (isinstance(stages, int) and 2 <= stages <= depth + 1):
            raise ConfigError(f"model.num_stages={stages} does not fit a model with {depth} encoder layers: it must "
                              f"be 2..{depth + 1} (the embeddings, then the layers in groups), or null (one per layer)")
        # layers 1..depth split into stages-1 contiguous groups, the earlier groups no smaller
        return {n: 0 if i == 0 else 1 + (i - 1) * (stages - 1) // depth for n, i in fine.items()}

    def encode(self, backbone, inputs):
        fed = {k: v for k, v in inputs.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
        training = backbone.training
        # A frozen backbone is a fixed feature extractor (no dropout inside), as when its features are cached.
        fixed = training and not any(p.requires_grad for p in backbone.parameters())
        if fixed:
            backbone.eval()
        try:
            hidden = backbone(**fed).last_hidden_state
        finally:
            backbone.train(training)
        if "mlm_positions" in inputs:  # masked-language modelling: the masked tokens' states, flattened
            features = hidden.flatten(0, 1)[inputs["mlm_positions"]]
        else:
            features = POOLING[self.cfg.get("pooling", "cls")](hidden, inputs["attention_mask"])
        return F.dropout(features, self.cfg.get("drop_rate", 0.0), training)

    def backbone_state(self, backbone, state):
        """A state dict of a task model (``BertForMaskedLM``: ``bert.``...) reduced to the encoder's keys."""
        prefix = backbone.base_model_prefix + "."
        if any(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        return {k: v for k, v in state.items() if not k.startswith("pooler.")}

    # --- preprocessing ------------------------------------------------------------------------
    def tokenizer(self):
        if self._tokenizer is None:
            self._tokenizer = create_tokenizer(self.cfg)
        return self._tokenizer

    def fingerprint(self):
        return tokenizer_digest(self.tokenizer())

    def preprocessing(self, backbone):
        tokenizer = self.tokenizer()
        config = backbone.config
        if len(tokenizer) > config.vocab_size:
            raise ConfigError(f"the tokenizer of model '{self.cfg.name}' has {len(tokenizer)} tokens but the model's "
                              f"vocabulary has {config.vocab_size}: they do not belong together; use the model's own "
                              f"tokenizer (model.tokenizer.path=null) or a model with vocab_size >= {len(tokenizer)}")
        limit = getattr(config, "max_position_embeddings", None) or tokenizer.model_max_length
        return {"tokenizer": tokenizer, "max_length": int(limit), "vocab_size": int(config.vocab_size),
                "tokenizer_digest": tokenizer_digest(tokenizer)}

    def create_transform(self, preprocessing, data_cfg, train):
        from transferlab.data.text import TEXT_KINDS, TextInputs

        if data_cfg.kind not in TEXT_KINDS:
            raise ConfigError(f"model '{self.cfg.name}' (model.family=hf) reads text, but data "
                              f"'{data_cfg.get('name', data_cfg.kind)}' (data.kind={data_cfg.kind}) is not a text "
                              f"dataset; valid kinds: {', '.join(TEXT_KINDS)} (a source run on images? use "
                              f"source=none or source=text_mlm)")
        return TextInputs.from_config(preprocessing, data_cfg, train)


def _mean(hidden, mask):
    """Mean over real tokens only: padding never moves a sentence's features."""
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1)


POOLING = {"cls": lambda hidden, mask: hidden[:, 0], "mean": _mean}


def _local_dir(path, key: str) -> Path:
    p = Path(str(path)).expanduser()
    if not (p / "config.json").is_file():
        raise ConfigError(f"{key}={path} is not a save_pretrained() directory (it has no config.json); "
                          f"pass the folder written by model.save_pretrained(...)")
    return p


def _load(fn, what: str, hub: str | None = None):
    try:
        return fn()
    except (OSError, ValueError) as e:
        why = str(e).splitlines()[0]
        if hub is not None:
            raise ConfigError(unknown_or_unreachable(hub, why)) from None
        raise ConfigError(f"cannot load {what}: {why}") from None


def unknown_or_unreachable(name: str, why: str) -> str:
    return (f"could not load Hugging Face model '{name}': {why}. {suggest(name, KNOWN + cached_repos())} "
            f"Supply the model another way: model.path=/path/to/save_pretrained_dir, pre-download it into the "
            f"Hugging Face cache (HF_HOME) on a machine with network, or build one from a config "
            f"(model=tiny_bert, model.config={{...}}).")


def cached_repos() -> list[str]:
    try:
        from huggingface_hub import scan_cache_dir

        return [r.repo_id for r in scan_cache_dir().repos if r.repo_type == "model"]
    except Exception:  # noqa: BLE001 - no cache folder yet
        return []


def check_hub(name: str) -> None:
    require_hub_copy(name, ("config.json",), lambda why: unknown_or_unreachable(name, why))


# --- tokenizers ---------------------------------------------------------------------------------
def create_tokenizer(cfg):
    """The model's own (AutoTokenizer), a saved one (``tokenizer.path``), or one trained on a corpus."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    spec = cfg.get("tokenizer") or {}
    if spec.get("path"):
        p = Path(str(spec.path)).expanduser()
        if p.is_file():
            return _wrap(PreTrainedTokenizerFast(tokenizer_file=str(p)))
        if not p.is_dir():
            raise ConfigError(f"model.tokenizer.path={spec.path} does not exist; pass a tokenizer.json file or a "
                              f"tokenizer save_pretrained() directory")
        return _load(lambda: AutoTokenizer.from_pretrained(str(p)), f"model.tokenizer.path={spec.path}")
    if spec.get("train_on"):
        return trained_tokenizer(spec)
    if cfg.get("path"):
        return _load(lambda: AutoTokenizer.from_pretrained(str(_local_dir(cfg.path, "model.path"))),
                     f"the tokenizer of model.path={cfg.path}")
    if cfg.get("config"):
        raise ConfigError("model.config builds a model without a tokenizer: set model.tokenizer.train_on=[data "
                          "overrides of a corpus] to train one, or model.tokenizer.path=... to use a saved one")
    check_hub(cfg.name)
    return _load(lambda: AutoTokenizer.from_pretrained(cfg.name), f"the tokenizer of {cfg.name}", hub=cfg.name)


def _wrap(fast):
    """BERT's special tokens on a tokenizer read from a bare tokenizer.json."""
    names = dict(zip(("pad_token", "unk_token", "cls_token", "sep_token", "mask_token"), SPECIAL))
    fast.add_special_tokens({k: v for k, v in names.items() if getattr(fast, k, None) is None
                             and fast.convert_tokens_to_ids(v) != fast.unk_token_id})
    return fast


def trained_tokenizer(spec):
    """A WordPiece tokenizer trained on the training texts of ``train_on`` (tl-train data overrides),
    cached under ``cache_dir`` by those texts and settings: every run and its source run get the same one."""
    from omegaconf import OmegaConf
    from transformers import PreTrainedTokenizerFast

    from transferlab.config import compose_config, to_plain
    from transferlab.data import KINDS

    data = to_plain(compose_config(list(spec.train_on)).data)
    texts = KINDS.create(data["kind"], OmegaConf.create(data))["train"].texts_only()
    key = json.dumps({"texts": hashlib.sha256("\x00".join(texts).encode()).hexdigest(), "vocab_size": spec.vocab_size,
                      "lowercase": spec.get("lowercase", True), "trainer": wordpiece.VERSION}, sort_keys=True)
    folder = Path(str(spec.cache_dir)).expanduser() / hashlib.sha256(key.encode()).hexdigest()[:12]
    file = folder / "tokenizer.json"
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "w") as lock:  # one training per cache: DDP ranks and parallel jobs wait for it
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not file.is_file():
            tok = wordpiece.train_wordpiece(texts, spec.vocab_size, SPECIAL, spec.get("lowercase", True))
            tmp = folder / f".tokenizer.{os.getpid()}.json"
            tok.save(str(tmp))
            os.replace(tmp, file)  # atomic: concurrent jobs never read half a file
            log.info("trained a %d-token WordPiece tokenizer on %d texts into %s", tok.get_vocab_size(), len(texts),
                     file)
    return _wrap(PreTrainedTokenizerFast(tokenizer_file=str(file)))


def tokenizer_digest(tokenizer) -> str:
    """What the token ids depend on (vocabulary, normalisation, special tokens): part of feature-cache keys."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    text = backend.to_str() if backend is not None else json.dumps(sorted(tokenizer.get_vocab().items()))
    return hashlib.sha256(text.encode()).hexdigest()[:16]
