"""Generated sentences with two label columns and a controllable shift between two domains.

Labels: ``topic`` (food, politics, science, sports) and ``sentiment`` (negative, positive). A
sentence mixes topic words (pseudo-words, 32 per topic, 5 per sentence), sentiment words and topic-neutral filler in
a template. The ``source``
domain writes like news; the ``target`` domain like short reviews, and with probability ``shift``
uses a topic or sentiment word of its own instead of a shared one: the same classes, another
vocabulary and style. The source domain in quantity is the unlabelled corpus a text backbone
pretrains on (``task=mlm``); the target domain few-shot is the task it transfers to.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Literal

import numpy as np

from transferlab.data import KINDS
from transferlab.data.base import split_three_ways
from transferlab.data.text import LabeledTexts, TextData
from transferlab.errors import DataError
from transferlab.settings import POSITIVE_INT, UNIT, setting

TOPICS = ["food", "politics", "science", "sports"]
SENTIMENTS = ["negative", "positive"]
_SYLLABLES = ("ka ve ro mi tu sa lo ne pi da gu ze fo ri ba mo te lu si no ha ki po re vu di la ma "
              "go pe").split()


def _words(tag: str, n: int) -> list[str]:
    """``n`` pronounceable pseudo-words, fixed by ``tag``: many words per class (so a few examples cannot
    cover them) whose pieces are shared by every class (so spelling gives no class away)."""
    rng = np.random.default_rng(zlib.crc32(tag.encode()))
    out: list[str] = []
    while len(out) < n:
        word = "".join(rng.choice(_SYLLABLES, rng.integers(2, 4)))
        if word not in out and word not in _TAKEN:
            _TAKEN.add(word)
            out.append(word)
    return out


_TAKEN: set[str] = set()
# class -> (shared words, source-only words, target-only words)
TOPIC_WORDS = {t: (_words(f"{t}/shared", 20), _words(f"{t}/source", 6), _words(f"{t}/target", 6)) for t in TOPICS}
SENTIMENT_WORDS = {
    "positive": ("excellent great wonderful impressive brilliant remarkable superb fine".split(),
                 "promising successful praised acclaimed".split(), "awesome lovely amazing fab".split()),
    "negative": ("terrible awful disappointing poor dreadful weak bad dismal".split(),
                 "criticised troubled failed condemned".split(), "boring gross meh lame".split()),
}
FILLER = "today week city people report year country morning time story night group news".split()
TEMPLATES = {  # {t}: topic word, {s}: sentiment word, {f}: filler
    "source": ["the {t} and the {t} were {s} this {f} , the {t} of the {t} said {t}",
               "officials called the {t} {s} after the {t} met the {t} and {t} in the {t} {f}",
               "a {s} {t} : {t} and {t} drew {t} attention across the {t} {f}",
               "in the latest {f} the {t} proved {s} for the {t} , {t} , {t} and {t}"],
    "target": ["just tried the {t} with my {t} and {t} , honestly {s} ! {t} {t}",
               "so {s} lol the {t} and {t} this {f} , {t} and {t} too",
               "my {f} review : {t} {s} , {t} and {t} {s} , {t} {t}",
               "would not recommend ... wait the {t} was {s} , {t} {t} {t} {t} too"],
}


def _pick(words: tuple[list[str], list[str], list[str]], domain: str, shift: float, rng) -> str:
    shared, source, target = words
    own = source if domain == "source" else target
    pool = own if rng.random() < (0.2 if domain == "source" else shift) else shared
    return pool[rng.integers(len(pool))]


def generate(num_samples: int, domain: str, shift: float, seed: int):
    """Sentences and their topic and sentiment indices, fixed by ``seed`` and the domain."""
    if domain not in TEMPLATES:
        raise DataError(f"data.domain='{domain}' is not a domain; valid: source, target")
    if not 0 <= shift <= 1:
        raise DataError(f"data.shift={shift} is not valid: it must be in [0, 1]")
    rng = np.random.default_rng(seed + (0 if domain == "source" else 1_000_003))
    topics, sentiments = rng.integers(0, len(TOPICS), num_samples), rng.integers(0, 2, num_samples)
    texts = []
    for topic, sentiment in zip(topics, sentiments):
        template = TEMPLATES[domain][rng.integers(len(TEMPLATES[domain]))]
        parts = template.split("{")
        out = [parts[0]]
        for part in parts[1:]:
            slot, rest = part[0], part[2:]
            if slot == "t":
                word = _pick(TOPIC_WORDS[TOPICS[topic]], domain, shift, rng)
            elif slot == "s":
                word = _pick(SENTIMENT_WORDS[SENTIMENTS[sentiment]], domain, shift, rng)
            else:
                word = FILLER[rng.integers(len(FILLER))]
            out += [word, rest]
        texts.append("".join(out))
    return texts, topics, sentiments


@KINDS.register("synthetic_text")
@dataclass(kw_only=True)
class SyntheticTextData(TextData):
    kind: str = "synthetic_text"
    domain: Literal["source", "target"] = "target"
    shift: float = setting(0.5, UNIT)  # share of target-only topic/sentiment words in the target domain
    num_samples: int = setting(1000, POSITIVE_INT)
    seed: int = 0
    stratify_by: str = "topic"

    def create(self):
        texts, topics, sentiments = generate(self.num_samples, self.domain, self.shift, self.seed)
        ds = LabeledTexts(texts, {"topic": topics, "sentiment": sentiments},
                          {"topic": TOPICS, "sentiment": SENTIMENTS})
        return split_three_ways(ds, self.stratify_by, self.val_fraction, self.test_fraction, self.split_seed)
