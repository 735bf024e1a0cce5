"""The hf family: Hugging Face transformers text encoders (``model.kind=hf``): BERT and its kin.

A backbone comes from the hub by name (``model.pretrained=true``), from a ``save_pretrained``
directory (``model.path``) or from a config alone (``model.config``: random init, how tests and the
offline default build tiny BERTs). Its tokenizer comes with it (``AutoTokenizer``), from a file
(``model.tokenizer.path``), or is trained here with the ``tokenizers`` library on a corpus
(``model.tokenizer.train_on``): a step ``run.prepare`` performs, cached by the corpus and settings.
Stages: the embeddings, then the encoder layers grouped into ``model.num_stages``; layers (layer
decay): the embeddings, then each encoder layer. ``TextInputs`` turns texts into token ids. torch and
``transformers`` are imported only when a text model is built.
"""
from __future__ import annotations

import fcntl
import hashlib
import inspect
import json
import logging
import os
import random
import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from transferlab.errors import ConfigError, suggest, unwritable_cache
from transferlab.models import FAMILIES
from transferlab.models.base import Family, require_hub_copy
from transferlab.settings import POSITIVE_INT, Settings, optional, setting

log = logging.getLogger(__name__)

# Hub names offered when a name is unknown (with the repositories in the local cache).
KNOWN = ["bert-base-uncased", "bert-base-cased", "bert-large-uncased", "distilbert-base-uncased", "roberta-base",
         "distilroberta-base", "albert-base-v2", "microsoft/deberta-v3-base", "google/electra-small-discriminator",
         "sentence-transformers/all-MiniLM-L6-v2", "prajjwal1/bert-tiny"]
_LAYER = re.compile(r"(?:^|\.)(?:layer|layers|block|blocks|h)\.(\d+)\.")
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


@dataclass(kw_only=True)
class Tokenizer(Settings):
    """Where token ids come from; default: the model's own (AutoTokenizer)."""
    path: str | None = None  # a tokenizer.json file or a tokenizer save_pretrained() directory
    train_on: list[str] | None = None  # tl-train data overrides of a corpus to train a WordPiece tokenizer on
    vocab_size: int = setting(8000, POSITIVE_INT)
    lowercase: bool = True
    cache_dir: str = "~/.cache/transferlab/tokenizers"


@FAMILIES.register("hf")
@dataclass(kw_only=True)
class HfFamily(Family):
    kind: str = "hf"
    pretrained: bool = True
    path: str | None = None  # a save_pretrained() directory (weights, config and tokenizer); wins over name
    config: dict | None = None  # a transformers config mapping ({model_type: bert, ...}): random init, no hub
    tokenizer: Tokenizer = setting(factory=Tokenizer)
    pooling: Literal["cls", "mean"] = "cls"
    num_stages: int | None = setting(None, optional(POSITIVE_INT))
    modality = "text"
    _loaded: object = field(default=None, init=False, repr=False, compare=False)  # the tokenizer, once loaded
    _record: dict = field(default_factory=dict, init=False, repr=False, compare=False)
    _corpus: object = field(default=None, init=False, repr=False, compare=False)  # (key, texts) of train_on

    def norm_types(self):
        return ()  # LayerNorm keeps no running statistics: nothing freezes with a stage but its weights

    # --- the backbone -------------------------------------------------------------------------
    def create_backbone(self, input_size: int | None = None):
        from transformers import AutoConfig, AutoModel

        if self._record.get("config"):
            spec = dict(self._record["config"])
            backbone = AutoModel.from_config(AutoConfig.for_model(spec.pop("model_type"), **spec))
        elif self.path:
            path = _local_dir(self.path, "model.path")
            backbone = _load(lambda: AutoModel.from_pretrained(str(path)), f"model.path={self.path}")
        elif self.config:
            backbone = self._from_config()
        elif self.pretrained:
            check_hub(self.name)
            backbone = _load(lambda: AutoModel.from_pretrained(self.name), f"model.name={self.name}", hub=self.name)
        else:
            check_hub(self.name)
            config = _load(lambda: AutoConfig.from_pretrained(self.name), f"model.name={self.name}", hub=self.name)
            backbone = AutoModel.from_config(config)
        if "input_ids" not in inspect.signature(backbone.forward).parameters:
            raise ConfigError(f"model '{self.name}' ({backbone.config.model_type}) does not read token ids (its "
                              f"forward takes {', '.join(list(inspect.signature(backbone.forward).parameters)[:4])} "
                              f"…); text models here are encoders fed input_ids: bert, roberta, deberta, albert …")
        if getattr(backbone, "pooler", None) is not None:
            # pooling is ours (model.pooling); an unused pooler's weights would stall DDP. A module, not
            # None: LayoutLM calls its pooler unconditionally
            from transferlab.models.network import NoPooler

            backbone.pooler = NoPooler()
        text = backbone.config.get_text_config() if hasattr(backbone.config, "get_text_config") else backbone.config
        backbone.num_features = text.hidden_size  # a multimodal model's text width (ModernVBERT), not its own
        if self.grad_checkpointing:
            if not backbone.supports_gradient_checkpointing:
                raise ConfigError(f"model '{self.name}' does not support model.grad_checkpointing=true")
            backbone.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        return backbone

    def _from_config(self):
        """A random-init model of ``model.config``; special-token ids it leaves unset come from the
        tokenizer (ESM has no pad id of its own), ids outside the vocabulary are refused by key."""
        from transformers import AutoConfig, AutoModel

        spec = dict(self.config)
        model_type = spec.pop("model_type", "bert")
        what = f"model.config (model_type={model_type})"
        try:
            config = AutoConfig.for_model(model_type, **spec)
        except Exception as e:  # noqa: BLE001 - transformers' own validators raise their own classes
            raise ConfigError(f"{what} is not a valid transformers config: {_first_line(e)}") from None
        parts = [k for k in getattr(config, "sub_configs", {}) if getattr(config, k, None) is not None]
        if parts:
            # the sizes given here would reach neither part, which would be built at full size (UltraVBERT:
            # a vision tower of billions of parameters, tens of GB before the first step)
            raise ConfigError(f"{what} is a model of several parts ({', '.join(parts)}); "
                              f"model.config builds a text encoder of one part: set model.config.model_type to "
                              f"a text encoder (bert, roberta, modernbert …)")
        if getattr(config, "languages", None) and getattr(config, "default_language", "") is None:
            # X-MOD routes every batch through one language's adapters and cannot guess which
            raise ConfigError(f"{what} needs the language its adapters serve: set +model.config.default_language "
                              f"to one of {list(config.languages)}")
        tokenizer = self.load_tokenizer()
        for key in _SPECIAL_IDS:
            own = getattr(tokenizer, key, None)
            if getattr(config, key, None) is None and isinstance(own, int) and key not in spec:
                setattr(config, key, own)
        vocab = getattr(config, "vocab_size", None)
        outside = {k: getattr(config, k) for k in _SPECIAL_IDS if isinstance(getattr(config, k, None), int)
                   and vocab is not None and not 0 <= getattr(config, k) < vocab}
        if outside:
            shown = ", ".join(f"model.config.{k}={v}" for k, v in outside.items())
            raise ConfigError(f"{what}: {shown} outside the vocabulary (vocab_size={vocab}); special-token ids are "
                              f"rows of the embedding: set them below {vocab} (this tokenizer's: "
                              f"{ {k: getattr(tokenizer, k, None) for k in outside} })")
        try:
            return AutoModel.from_config(config)
        except Exception as e:  # noqa: BLE001 - the config is the user's; any failure to build is about it
            raise ConfigError(f"{what} does not build a {model_type} model: {_first_line(e)}") from None

    def groups(self, backbone, coarse):
        """Embeddings = 0, encoder layer i = i + 1, anything after the layers (final norms) = the last.
        Layers are found by name (``layer.3.``, ``blocks.3.`` …) or, where a model names them its own way
        (ALBERT's shared groups, XLM's parallel lists), as the entries of its longest module lists."""
        names = [n for n, _ in backbone.named_parameters()]
        layer = {n: int(m.group(1)) + 1 for n in names if (m := _LAYER.search(n))} or _listed_layers(backbone)
        depth = max(layer.values(), default=0)
        fine = {n: layer.get(n, 0 if "embed" in n else depth) for n in names}
        if not coarse:
            return fine
        if depth == 0 and not self.num_stages:
            return None  # no layers to freeze by: strategies that need stages refuse it by name
        stages = self.num_stages or depth + 1
        if not 2 <= stages <= depth + 1:
            raise ConfigError(f"model.num_stages={stages} does not fit model '{self.name}' with {depth} encoder "
                              f"layers: it must be 2..{depth + 1} (the embeddings, then the layers in groups), or "
                              f"null (one per layer)")
        # layers 1..depth split into stages-1 contiguous groups, the earlier groups no smaller
        return {n: 0 if i == 0 else 1 + (i - 1) * (stages - 1) // depth for n, i in fine.items()}

    def layers(self, backbone):
        return backbone.config.num_hidden_layers

    def encode_layer(self, backbone, inputs, layer):
        """Encoder layer ``layer``'s states (``hidden_states[0]`` are the embeddings), pooled like ``encode``."""
        fed = {k: v for k, v in inputs.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
        hidden = backbone(**fed, output_hidden_states=True).hidden_states[layer]
        return POOLING[self.pooling](hidden, inputs["attention_mask"])

    def _hidden(self, backbone, inputs):
        fed = {k: v for k, v in inputs.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
        training = backbone.training
        # A frozen backbone is a fixed feature extractor (no dropout inside), as when its features are cached.
        fixed = training and not any(p.requires_grad for p in backbone.parameters())
        if fixed:
            backbone.eval()
        try:
            return backbone(**fed).last_hidden_state
        finally:
            backbone.train(training)

    def encode(self, backbone, inputs):
        import torch.nn.functional as F

        features = POOLING[self.pooling](self._hidden(backbone, inputs), inputs["attention_mask"])
        return F.dropout(features, self.drop_rate, backbone.training)

    def encode_tokens(self, backbone, inputs):
        """The states of the tokens a token-level task chose (``TextInputs``' masked positions), flattened."""
        import torch.nn.functional as F

        features = self._hidden(backbone, inputs).flatten(0, 1)[inputs["mlm_positions"]]
        return F.dropout(features, self.drop_rate, backbone.training)

    def backbone_state(self, backbone, state):
        """A state dict of a task model (``BertForMaskedLM``: ``bert.``...) reduced to the encoder's keys."""
        prefix = backbone.base_model_prefix + "."
        if any(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        return {k: v for k, v in state.items() if not k.startswith("pooler.")}

    # --- the tokenizer --------------------------------------------------------------------------
    def steps(self) -> list:
        if self.tokenizer.train_on and not self.tokenizer.path and not self._record.get("tokenizer"):
            return [TrainTokenizer(self._trained_file(), *self._corpus_texts(), self.tokenizer)]
        return []

    def inputs_key(self) -> str:
        """The tokenizer's identity without loading or training it: a trained one's cache key, a file's content."""
        spec = self.tokenizer
        if spec.path:
            p = Path(spec.path).expanduser()
            files = [p] if p.is_file() else sorted(p.glob("*.json")) + sorted(p.glob("*.txt")) if p.is_dir() else []
            return hashlib.sha256(b"".join(f.read_bytes() for f in files)).hexdigest()[:16] if files else spec.path
        if spec.train_on:
            return self._trained_file().parent.name
        return ""

    def _corpus_texts(self) -> tuple[str, list[str]]:
        if self._corpus is None:
            from omegaconf import OmegaConf

            from transferlab.config import compose_config, to_plain
            from transferlab.data import create_kind

            data = to_plain(compose_config(list(self.tokenizer.train_on)).data)
            texts = create_kind(OmegaConf.create(data))["train"].texts_only()
            key = json.dumps({"texts": hashlib.sha256("\x00".join(texts).encode()).hexdigest(),
                              "vocab_size": self.tokenizer.vocab_size, "lowercase": self.tokenizer.lowercase,
                              "trainer": _trainer_version()}, sort_keys=True)
            self._corpus = (hashlib.sha256(key.encode()).hexdigest()[:12], texts)
        return self._corpus

    def _trained_file(self) -> Path:
        return Path(self.tokenizer.cache_dir).expanduser() / self._corpus_texts()[0] / "tokenizer.json"

    def load_tokenizer(self):
        if self._loaded is None:
            self._loaded = self._create_tokenizer()
        return self._loaded

    def _create_tokenizer(self):
        from transformers import AutoTokenizer, PreTrainedTokenizerFast

        if self._record.get("tokenizer"):  # a checkpoint's own
            from tokenizers import Tokenizer as Backend

            return PreTrainedTokenizerFast(tokenizer_object=Backend.from_str(self._record["tokenizer"]),
                                           **self._record.get("special_tokens", {}))
        spec = self.tokenizer
        if spec.path:
            p = Path(spec.path).expanduser()
            if p.is_file():
                return _wrap(_tokenizer_file(p, f"model.tokenizer.path={spec.path}"))
            if not p.is_dir():
                raise ConfigError(f"model.tokenizer.path={spec.path} does not exist; pass a tokenizer.json file or a "
                                  f"tokenizer save_pretrained() directory")
            return _load(lambda: AutoTokenizer.from_pretrained(str(p)), f"model.tokenizer.path={spec.path}")
        if spec.train_on:
            file = self._trained_file()
            if not file.is_file():
                raise ConfigError(f"the tokenizer of model '{self.name}' is not trained yet ({file}); run.prepare "
                                  f"trains it before the model is built")
            return _wrap(_tokenizer_file(file, "the cached tokenizer (delete it to train it again)"))
        if self.path:
            return _load(lambda: AutoTokenizer.from_pretrained(str(_local_dir(self.path, "model.path"))),
                         f"the tokenizer of model.path={self.path}")
        if self.config:
            raise ConfigError("model.config builds a model without a tokenizer: set model.tokenizer.train_on=[data "
                              "overrides of a corpus] to train one, or model.tokenizer.path=... to use a saved one")
        check_hub(self.name)
        return _load(lambda: AutoTokenizer.from_pretrained(self.name), f"the tokenizer of {self.name}", hub=self.name)

    def record(self, backbone) -> dict:
        tokenizer = self.load_tokenizer()
        special = {k: v for k, v in tokenizer.special_tokens_map.items() if isinstance(v, str)}
        return {"config": backbone.config.to_dict(), "tokenizer": tokenizer.backend_tokenizer.to_str(),
                "special_tokens": special}

    def restore(self, record: dict) -> None:
        self._record = dict(record or {})

    # --- preprocessing ------------------------------------------------------------------------
    def preprocessing(self, backbone):
        tokenizer = self.load_tokenizer()
        config = backbone.config
        if len(tokenizer) > config.vocab_size:
            raise ConfigError(f"the tokenizer of model '{self.name}' has {len(tokenizer)} tokens but the model's "
                              f"vocabulary has {config.vocab_size}: they do not belong together; use the model's own "
                              f"tokenizer (model.tokenizer.path=null) or a model with vocab_size >= {len(tokenizer)}")
        limit = getattr(config, "max_position_embeddings", None) or tokenizer.model_max_length
        return {"tokenizer": tokenizer, "max_length": int(limit), "vocab_size": int(config.vocab_size),
                "tokenizer_digest": tokenizer_digest(tokenizer)}

    def create_transform(self, preprocessing, data, train, tasks=()):
        masked = [t for t in tasks if t.token_level]
        for task in masked:
            if task.num_classes != preprocessing["vocab_size"]:
                raise ConfigError(f"tasks.{task.name} predicts {task.num_classes} token ids but the model's vocabulary "
                                  f"has {preprocessing['vocab_size']} tokens; set tasks.{task.name}.num_classes="
                                  f"{preprocessing['vocab_size']}")
        return TextInputs.from_config(preprocessing, data, train, masked[0].probability if masked else None)


def _mean(hidden, mask):
    """Mean over real tokens only: padding never moves a sentence's features."""
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1)


POOLING = {"cls": lambda hidden, mask: hidden[:, 0], "mean": _mean}


def _trainer_version():
    from transferlab.models import wordpiece

    return wordpiece.VERSION


@dataclass(frozen=True)
class TrainTokenizer:
    """A step of ``run.prepare``: a WordPiece tokenizer trained on a corpus into the cache, once per cache
    under a lock (DDP ranks and parallel jobs wait for it)."""
    file: Path
    key: str
    texts: list
    spec: Tokenizer

    def __str__(self) -> str:
        return f"train a tokenizer into {self.file.parent}"

    def done(self) -> bool:
        return _readable_tokenizer(self.file)

    def perform(self, train=None) -> None:
        from transferlab.models import wordpiece

        folder = self.file.parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
            lock = open(folder / ".lock", "w")  # noqa: SIM115 - closed by the `with` below
        except OSError as e:
            raise ConfigError(unwritable_cache(folder, e, "tokenizer", "model.tokenizer.cache_dir",
                                               "give a trained tokenizer (model.tokenizer.path=...)")) from None
        with lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if _readable_tokenizer(self.file):
                return
            if self.file.is_file():
                log.warning("the cached tokenizer %s is damaged; training it again", self.file)
            tok = wordpiece.train_wordpiece(self.texts, self.spec.vocab_size, SPECIAL, self.spec.lowercase)
            tmp = folder / f".tokenizer.{os.getpid()}.json"
            tok.save(str(tmp))
            os.replace(tmp, self.file)  # atomic: concurrent jobs never read half a file
            log.info("trained a %d-token WordPiece tokenizer on %d texts into %s", tok.get_vocab_size(),
                     len(self.texts), self.file)


def _readable_tokenizer(file: Path) -> bool:
    """Whether a cached tokenizer file is there and whole (a damaged one is trained again, as sources are)."""
    if not file.is_file():
        return False
    from tokenizers import Tokenizer as Backend

    try:
        Backend.from_file(str(file))
        return True
    except Exception:  # noqa: BLE001 - tokenizers raises a bare Exception for any unreadable file
        return False


def _tokenizer_file(file: Path, what: str):
    """A tokenizer.json as a transformers tokenizer, or an error naming the file."""
    from transformers import PreTrainedTokenizerFast

    try:
        return PreTrainedTokenizerFast(tokenizer_file=str(file))
    except Exception as e:  # noqa: BLE001 - tokenizers raises a bare Exception for a damaged file
        raise ConfigError(f"{what}: '{file}' is not a readable tokenizer.json ({_first_line(e)}); pass a file "
                          f"written by tokenizer.save() / save_pretrained()") from None


def _local_dir(path, key: str) -> Path:
    p = Path(str(path)).expanduser()
    if not (p / "config.json").is_file():
        raise ConfigError(f"{key}={path} is not a save_pretrained() directory (it has no config.json); "
                          f"pass the folder written by model.save_pretrained(...)")
    return p


_SPECIAL_IDS = ("pad_token_id", "bos_token_id", "eos_token_id", "sep_token_id", "cls_token_id", "mask_token_id")


def _first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return next((line for line in lines if not line.startswith("Class validation error")), type(error).__name__)


def _listed_layers(backbone) -> dict[str, int]:
    """Parameter name -> layer (1-based) for the entries of the backbone's longest ``ModuleList``s
    (outermost only: ALBERT's groups, not the layers inside a group)."""
    from torch import nn

    lists = {}
    for name, module in backbone.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) and not any(name.startswith(o + ".") for o in lists):
            lists[name] = len(module)
    if not lists:
        return {}
    longest = max(lists.values())
    layer = {}
    for name, _ in backbone.named_parameters():
        for prefix, length in lists.items():
            if length == longest and name.startswith(prefix + "."):
                layer[name] = int(name[len(prefix) + 1:].split(".")[0]) + 1
    return layer


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


def _wrap(fast):
    """BERT's special tokens on a tokenizer read from a bare tokenizer.json."""
    names = dict(zip(("pad_token", "unk_token", "cls_token", "sep_token", "mask_token"), SPECIAL))
    fast.add_special_tokens({k: v for k, v in names.items() if getattr(fast, k, None) is None
                             and fast.convert_tokens_to_ids(v) != fast.unk_token_id})
    return fast


def tokenizer_digest(tokenizer) -> str:
    """What the token ids depend on (vocabulary, normalisation, special tokens): part of feature-cache keys."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    text = backend.to_str() if backend is not None else json.dumps(sorted(tokenizer.get_vocab().items()))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# --- inputs -----------------------------------------------------------------------------------------
class TextInputs:
    """The hf family's transform: raw item -> (augmented) text, and ``collate``: a batch -> token tensors.

    Randomness (augmentation, training masks) is drawn from torch's global RNG, so a run's seed (and
    Lightning's worker seeding) fixes it; evaluation masks are fixed per text. ``mlm_probability``: the
    stream has a token-level task (``tasks.<name>.kind=mlm``), whose labels (``token``) are the ids of
    the tokens the collate masks."""

    def __init__(self, tokenizer, max_length: int, tokenizer_digest: str, augment=None,
                 mlm_probability: float | None = None, train: bool = False):
        self.tokenizer, self.max_length, self.tokenizer_digest = tokenizer, max_length, tokenizer_digest
        self.augment, self.mlm_probability, self.train = augment, mlm_probability, train
        if mlm_probability is not None and tokenizer.mask_token_id is None:
            raise ConfigError("a masked-language-modelling task needs a tokenizer with a mask token; this model's "
                              "tokenizer has none")

    @classmethod
    def from_config(cls, preprocessing: dict, data, train: bool, mlm_probability=None) -> "TextInputs":
        from transferlab.data.text import EDA

        limit = preprocessing["max_length"]
        if data.max_length > limit:
            raise ConfigError(f"data.max_length={data.max_length!r} is not valid for this model: it must be an integer "
                              f"in 3..{limit} (the model's maximum sequence length)")
        augment = None
        if train and data.augment.enabled:
            a = data.augment
            augment = EDA(a.deletion, a.swap, a.insertion, a.replacement, a.replace_from)
        return cls(preprocessing["tokenizer"], data.max_length, preprocessing["tokenizer_digest"], augment,
                   mlm_probability, train)

    def bind(self, dataset) -> "TextInputs":
        """This transform for one dataset: EDA's vocabulary is that dataset's words."""
        if self.augment is None or self.augment.replace_from != "vocabulary":
            return self
        bound = object.__new__(type(self))
        bound.__dict__.update(self.__dict__)
        bound.augment = self.augment.with_vocabulary(dataset.vocabulary())
        return bound

    def __repr__(self) -> str:  # part of the feature-cache key
        return (f"TextInputs(tokenizer={self.tokenizer_digest}, max_length={self.max_length}, augment={self.augment}, "
                f"mlm={self.mlm_probability}, train={self.train})")

    def __call__(self, raw):
        import torch

        if self.augment is None:
            return raw
        rng = random.Random(int(torch.randint(0, 2**62, ())))
        return tuple(self.augment(t, rng) for t in raw) if isinstance(raw, tuple) else self.augment(raw, rng)

    def collate(self, items):
        """Tokenise a batch: truncated to ``max_length``, padded to its longest item only."""
        from torch.utils.data import default_collate

        raws, labels = zip(*items)
        pairs = isinstance(raws[0], tuple)
        texts = [r[0] for r in raws] if pairs else list(raws)
        encoded = self.tokenizer(texts, [r[1] for r in raws] if pairs else None, padding="longest", truncation=True,
                                 max_length=self.max_length, return_tensors="pt",
                                 return_special_tokens_mask=self.mlm_probability is not None)
        inputs = {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}
        if "token_type_ids" in encoded and pairs:
            inputs["token_type_ids"] = encoded["token_type_ids"]
        labels = default_collate(list(labels))
        if self.mlm_probability is not None:
            special = encoded["special_tokens_mask"].bool() | (encoded["attention_mask"] == 0)
            inputs["mlm_positions"], labels[MLM_COLUMN] = self._mask(inputs["input_ids"], special, texts)
        return inputs, labels

    def _mask(self, ids, special, texts: list[str]):
        """BERT's masking, in place: ``mlm_probability`` of the real tokens (at least one per text) are
        chosen; 80% become [MASK], 10% a random token, 10% stay. Training draws anew each time; evaluation
        masks are fixed per text (seeded by it), so validation scores compare across epochs and runs.
        Returns the chosen tokens' flat positions and original ids."""
        import torch

        if self.train:
            draws = torch.rand(ids.shape + (3,))
        else:
            draws = torch.stack([torch.rand(ids.shape[1], 3, generator=torch.Generator().manual_seed(
                zlib.crc32(text.encode()))) for text in texts])
        real = ~special
        chosen = (draws[..., 0] < self.mlm_probability) & real
        # a text that drew none gets its real token with the smallest draw
        lowest = torch.where(real, draws[..., 0], 2.0).argmin(1)
        none = ~chosen.any(1) & real.any(1)
        chosen[none, lowest[none]] = True
        targets = ids[chosen].clone()
        vocab = len(self.tokenizer)
        mask = chosen & (draws[..., 1] < 0.8)
        rand = chosen & (draws[..., 1] >= 0.8) & (draws[..., 1] < 0.9)
        ids[mask] = self.tokenizer.mask_token_id
        ids[rand] = (draws[..., 2][rand] * vocab).long().clamp(max=vocab - 1)
        return torch.nonzero(chosen.flatten()).squeeze(1), targets


MLM_COLUMN = "token"  # the label a masked-language-modelling task reads: the masked tokens' original ids
