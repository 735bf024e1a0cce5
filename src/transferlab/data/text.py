"""Text data: the settings every text kind shares and items that are texts (``conf/data/_text.yaml``).

Items are ``(text, labels)`` or ``((text, pair), labels)``; the hf family's ``TextInputs`` augments
words (training only, EDA below), then tokenises a whole batch at once with dynamic padding.
"""
from __future__ import annotations

import math
import numbers
import random
from dataclasses import dataclass
from typing import Literal

from transferlab.data.base import Data, LabeledItems, digest
from transferlab.errors import ConfigError, DataError
from transferlab.settings import POSITIVE_INT, UNIT, Settings, setting


@dataclass(kw_only=True)
class TextAugment(Settings):
    """EDA (Wei & Zou 2019) on training words before tokenising; evaluation never augments."""
    enabled: bool = False
    deletion: float = setting(0.1, UNIT)
    swap: float = setting(0.1, UNIT)
    insertion: float = setting(0.1, UNIT)
    replacement: float = setting(0.1, UNIT)
    replace_from: Literal["vocabulary", "wordnet"] = "vocabulary"


@dataclass(kw_only=True)
class TextData(Data):
    max_length: int = setting(128, (lambda v: POSITIVE_INT[0](v) and v >= 3, "an integer >= 3 ([CLS], a token, "
                                "[SEP]) and at most the model's maximum sequence length"))  # tokens per text (pair)
    augment: TextAugment = setting(factory=TextAugment)
    modality = "text"

    def check(self, where):
        if getattr(self, "text_pair_column", None) and self.max_length < 5:  # kinds that read pairs of texts
            raise ConfigError(f"{where}.max_length={self.max_length} leaves no token of a pair's texts: "
                              f"[CLS] text [SEP] pair [SEP] needs at least 5; set {where}.max_length >= 5")


class LabeledTexts(LabeledItems):
    """Texts (and optional second texts of a pair) with integer label columns."""

    what = "text"

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
        self._wordnet = _wordnet() if replace_from == "wordnet" else None

    def with_vocabulary(self, vocabulary) -> "EDA":
        bound = object.__new__(EDA)
        bound.__dict__.update(self.__dict__, vocabulary=list(vocabulary))
        return bound

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


def label_name(value, where: str, column: str) -> str:
    """A label cell as its class name: strings as written, numbers by value (``1.0`` is class ``1``, as
    pandas and ``datasets`` read a column holding 1 and 1.0); a missing label is a DataError naming
    ``where`` (file and line) and ``column``."""
    if value is None or (isinstance(value, str) and not value.strip()):
        raise DataError(f"{where}: the label in column '{column}' is empty; every row needs a label "
                        f"(remove the row or fill it)")
    if isinstance(value, str):
        return value
    if type(value).__module__ == "numpy" and hasattr(value, "item"):  # a numpy scalar: its Python value
        value = value.item()
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, numbers.Integral):
        return str(int(value))
    if isinstance(value, numbers.Real):
        if not math.isfinite(value):
            what = "NaN (a missing value)" if math.isnan(value) else f"{value} (not a class)"
            raise DataError(f"{where}: the label in column '{column}' is {what}; every row needs a label "
                            f"(remove the row or fill it)")
        # an integral float names the integer's class: 1.0 and 1 are one class, written '1'
        return str(int(value)) if float(value).is_integer() else str(value)
    raise DataError(f"{where}: the label in column '{column}' is a {type(value).__name__} ({str(value)[:60]}), "
                    f"not a class name; labels are strings or numbers")


def label_classes(values: list[str], declared=None) -> list[str]:
    """Class names of a label column: ``declared`` order, else sorted (numerically when all are integers).
    Declared numbers are named as ``label_name`` names labels (``1.0`` is class ``1``)."""
    if declared is not None:
        return [str(int(c)) if isinstance(c, float) and c.is_integer() else str(c) for c in declared]
    unique = set(values)
    try:
        return sorted(unique, key=int)
    except ValueError:
        return sorted(unique)


def check_texts(texts: list[str], origin: list[str], column: str) -> None:
    for text, where in zip(texts, origin):
        if text is not None and not isinstance(text, str):
            raise DataError(f"{where}: the text in column '{column}' is a {type(text).__name__} ({str(text)[:60]}), "
                            f"not a string; every row needs a text (write it as a string, e.g. \"{str(text)[:20]}\")")
        if text is None or not text.strip():
            raise DataError(f"{where}: the text in column '{column}' is empty; every row needs a text "
                            f"(remove the row or fill it)")
