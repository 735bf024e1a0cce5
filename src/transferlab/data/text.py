"""Text datasets and their inputs: what the text kinds (``text_files``, ``hf_datasets``, ``synthetic_text``) share.

Items are ``(text, labels)`` or ``((text, pair), labels)``; the model family's ``TextInputs``
augments words (training only), then its ``collate`` tokenises a whole batch at once with dynamic
padding (a batch is as wide as its longest item, never ``max_length``). Masked-language modelling
(``data.mlm``) is the same data with one label column, ``token``: the collate masks tokens and
the labels become the original ids of the masked ones (``task=mlm``).
"""
from __future__ import annotations

import random
import zlib

import numpy as np
import torch
from torch.utils.data import default_collate

from transferlab.data.base import LabeledImages, digest
from transferlab.errors import ConfigError, DataError

TEXT_KINDS = ("text_files", "hf_datasets", "synthetic_text")  # data kinds whose items are text
MLM_COLUMN = "token"


class LabeledTexts(LabeledImages):
    """Texts (and optional second texts of a pair) with integer label columns; splits, class subsets and
    few-shot sampling are the image datasets'."""

    def __init__(self, texts: list[str], targets, classes, pairs: list[str] | None = None,
                 origin: list[str] | None = None):
        super().__init__(targets, classes)
        self.texts, self.pairs, self.origin = list(texts), pairs, origin

    def load(self, i: int):
        return self.texts[i] if self.pairs is None else (self.texts[i], self.pairs[i])

    def describe(self, i: int) -> str:
        return self.origin[i] if self.origin else f"text {i}"

    def content_key(self) -> str:
        parts = ["\x00".join(self.texts).encode()]
        if self.pairs is not None:
            parts.append("\x00".join(self.pairs).encode())
        return digest(*parts)

    def texts_only(self) -> list[str]:
        return [t for i in self.indices for t in ([self.texts[i]] if self.pairs is None else
                                                  [self.texts[i], self.pairs[i]])]

    def vocabulary(self) -> list[str]:
        """The words of this view's texts: what EDA inserts and replaces with when no synonym source is used."""
        return sorted({w for t in self.texts_only() for w in t.split()})

    def __getitem__(self, idx: int):
        i = int(self.indices[idx])
        return self.load(i), {k: int(v[i]) for k, v in self.targets.items()}

    def corrupted(self, corruption):
        if corruption is not None:
            raise ConfigError(f"data.corruption.name={corruption[0]} corrupts images; text data has no pixels: "
                              f"remove data.corruption")
        return self


def as_corpus(splits: dict[str, LabeledTexts], cfg) -> dict[str, LabeledTexts]:
    """``data.mlm`` set: the texts alone, with the one label column MLM predicts (token ids, filled per batch)."""
    mlm = cfg.get("mlm")
    if not mlm:
        return splits
    vocab = mlm.get("vocab_size")
    if not (isinstance(vocab, int) and vocab > 0):
        raise ConfigError(f"data.mlm.vocab_size={vocab!r}: masked-language modelling predicts the model's vocabulary; "
                          f"set it to the model's vocab_size (task=mlm reads model.config.vocab_size)")
    out = {}
    for name, ds in splits.items():
        view = ds.subset(np.arange(len(ds)))
        view.targets = {MLM_COLUMN: np.zeros(len(ds.targets[next(iter(ds.targets))]), dtype=np.int64)}
        view.classes = {MLM_COLUMN: [str(i) for i in range(vocab)]}
        view.labels_per_batch = {MLM_COLUMN}
        out[name] = view
    return out


# --- augmentation (EDA, Wei & Zou 2019) -------------------------------------------------------------
class EDA:
    """Random deletion (each word with probability ``deletion``), then ``max(1, a*n)`` random swaps,
    insertions and replacements for a = ``swap``, ``insertion``, ``replacement`` (0 = off). Words for
    insertion and replacement: synonyms from WordNet (``replace_from: wordnet``, needs nltk and its
    wordnet data) or words of the training texts (``replace_from: vocabulary``)."""

    def __init__(self, deletion=0.1, swap=0.1, insertion=0.1, replacement=0.1, replace_from="vocabulary",
                 vocabulary=()):
        self.deletion, self.swap, self.insertion, self.replacement = deletion, swap, insertion, replacement
        self.replace_from, self.vocabulary = replace_from, list(vocabulary)
        for key in ("deletion", "swap", "insertion", "replacement"):
            v = getattr(self, key)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 1:
                raise ConfigError(f"data.augment.{key}={v!r} is not valid: it must be a number in [0, 1]")
        if replace_from not in ("vocabulary", "wordnet"):
            raise ConfigError(f"data.augment.replace_from={replace_from!r}; valid: vocabulary, wordnet")
        self._wordnet = _wordnet() if replace_from == "wordnet" else None

    def __repr__(self) -> str:
        return (f"EDA(deletion={self.deletion}, swap={self.swap}, insertion={self.insertion}, "
                f"replacement={self.replacement}, replace_from={self.replace_from})")

    def _word_for(self, word: str, rng: random.Random) -> str | None:
        if self._wordnet is not None:
            names = {lemma.name().replace("_", " ") for s in self._wordnet.synsets(word) for lemma in s.lemmas()}
            names.discard(word)
            return rng.choice(sorted(names)) if names else None
        return rng.choice(self.vocabulary) if self.vocabulary else None

    def __call__(self, text: str, rng: random.Random) -> str:
        words = text.split()
        if self.deletion and len(words) > 1:
            kept = [w for w in words if rng.random() >= self.deletion]
            words = kept or [rng.choice(words)]
        n = len(words)
        if self.swap and n > 1:
            for _ in range(max(1, int(self.swap * n))):
                i, j = rng.randrange(n), rng.randrange(n)
                words[i], words[j] = words[j], words[i]
        if self.insertion:
            for _ in range(max(1, int(self.insertion * n))):
                new = self._word_for(rng.choice(words), rng)
                if new:
                    words.insert(rng.randrange(len(words) + 1), new)
        if self.replacement:
            for _ in range(max(1, int(self.replacement * n))):
                i = rng.randrange(len(words))
                new = self._word_for(words[i], rng)
                if new:
                    words[i] = new
        return " ".join(words)


def _wordnet():
    try:
        from nltk.corpus import wordnet

        wordnet.synsets("good")
        return wordnet
    except (ImportError, LookupError) as e:
        raise ConfigError(f"data.augment.replace_from=wordnet needs nltk with its wordnet data ({type(e).__name__}); "
                          f"install them (pip install nltk; python -m nltk.downloader wordnet) or use "
                          f"data.augment.replace_from=vocabulary (words of the training texts)") from None


# --- inputs -----------------------------------------------------------------------------------------
class TextInputs:
    """The hf family's transform: raw item -> (augmented) text, and ``collate``: a batch -> token tensors.

    Randomness (augmentation, training masks) is drawn from torch's global RNG, so a run's seed (and
    Lightning's worker seeding) fixes it; evaluation masks are fixed per text."""

    def __init__(self, tokenizer, max_length: int, tokenizer_digest: str, augment: EDA | None = None,
                 mlm_probability: float | None = None, train: bool = False):
        self.tokenizer, self.max_length, self.tokenizer_digest = tokenizer, max_length, tokenizer_digest
        self.augment, self.mlm_probability, self.train = augment, mlm_probability, train
        if mlm_probability is not None and tokenizer.mask_token_id is None:
            raise ConfigError("data.mlm needs a tokenizer with a mask token; this model's tokenizer has none")

    @classmethod
    def from_config(cls, preprocessing: dict, data_cfg, train: bool) -> "TextInputs":
        limit = preprocessing["max_length"]
        length = data_cfg.get("max_length")
        if isinstance(length, bool) or not isinstance(length, int) or not 0 < length <= limit:
            raise ConfigError(f"data.max_length={length!r} is not valid for this model: it must be an integer in "
                              f"1..{limit} (the model's maximum sequence length)")
        mlm = data_cfg.get("mlm")
        if mlm:
            p = mlm.get("probability")
            if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 < p < 1:
                raise ConfigError(f"data.mlm.probability={p!r} is not valid: it must be a number in (0, 1)")
            if mlm.get("vocab_size") != preprocessing["vocab_size"]:
                raise ConfigError(f"data.mlm.vocab_size={mlm.get('vocab_size')} but the model's vocabulary has "
                                  f"{preprocessing['vocab_size']} tokens; set data.mlm.vocab_size="
                                  f"{preprocessing['vocab_size']}")
        aug = data_cfg.get("augment") or {}
        augment = None
        if train and aug.get("enabled"):
            augment = EDA(**{k: v for k, v in aug.items() if k != "enabled"})
        return cls(preprocessing["tokenizer"], length, preprocessing["tokenizer_digest"], augment,
                   mlm.get("probability") if mlm else None, train)

    def bind(self, dataset) -> "TextInputs":
        """This transform for one dataset: EDA's vocabulary is that dataset's words."""
        if self.augment is None or self.augment.replace_from != "vocabulary":
            return self
        bound = object.__new__(type(self))
        bound.__dict__.update(self.__dict__)
        bound.augment = object.__new__(EDA)
        bound.augment.__dict__.update(self.augment.__dict__, vocabulary=dataset.vocabulary())
        return bound

    def __repr__(self) -> str:  # part of the feature-cache key
        return (f"TextInputs(tokenizer={self.tokenizer_digest}, max_length={self.max_length}, augment={self.augment}, "
                f"mlm={self.mlm_probability}, train={self.train})")

    def __call__(self, raw):
        if self.augment is None:
            return raw
        rng = random.Random(int(torch.randint(0, 2**62, ())))
        return tuple(self.augment(t, rng) for t in raw) if isinstance(raw, tuple) else self.augment(raw, rng)

    def collate(self, items):
        """Tokenise a batch: truncated to ``max_length``, padded to its longest item only."""
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

    def _mask(self, ids: torch.Tensor, special: torch.Tensor, texts: list[str]):
        """BERT's masking, in place: ``mlm_probability`` of the real tokens (at least one per text) are
        chosen; 80% become [MASK], 10% a random token, 10% stay. Training draws anew each time; evaluation
        masks are fixed per text (seeded by it), so validation scores compare across epochs and runs.
        Returns the chosen tokens' flat positions and original ids."""
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


def label_classes(values: list[str], declared=None) -> list[str]:
    """Class names of a label column: ``declared`` order, else sorted (numerically when all are integers)."""
    if declared is not None:
        return [str(c) for c in declared]
    unique = set(values)
    try:
        return sorted(unique, key=int)
    except ValueError:
        return sorted(unique)


def check_texts(texts: list[str], origin: list[str], column: str) -> None:
    for text, where in zip(texts, origin):
        if not isinstance(text, str) or not text.strip():
            raise DataError(f"{where}: the text in column '{column}' is empty; every row needs a text "
                            f"(remove the row or fill it)")
