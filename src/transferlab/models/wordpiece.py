"""A WordPiece vocabulary learnt from a corpus, the same on every machine and in every process.

`tokenizers`' WordPieceTrainer learns BPE merges, but breaks ties between equally frequent pairs by the
ids it gave continuation pieces (``##x``) in hash-map order, which changes with each process: two fresh
caches got different vocabularies, and so different pretrained sources and different results. The same
merges are learnt here with ties broken by the pieces' text, and the vocabulary is handed to
`tokenizers`' own WordPiece model, which tokenises as before (normaliser, pre-tokeniser, longest match).
"""
from __future__ import annotations

import heapq
from collections import Counter, defaultdict

VERSION = 1  # part of the tokenizer cache key: a change to the algorithm must not reuse old vocabularies


def train_wordpiece(texts, vocab_size: int, special: list[str], lowercase: bool = True):
    """A BERT-style WordPiece ``tokenizers.Tokenizer`` with at most ``vocab_size`` tokens."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    normalizer, pre_tokenizer = normalizers.BertNormalizer(lowercase=lowercase), pre_tokenizers.BertPreTokenizer()
    counts = Counter(w for t in texts for w, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(t)))
    vocab = learn_vocabulary(counts, vocab_size, special)
    tok = Tokenizer(models.WordPiece({t: i for i, t in enumerate(vocab)}, unk_token="[UNK]"))
    tok.normalizer, tok.pre_tokenizer = normalizer, pre_tokenizer
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab.index("[CLS]")), ("[SEP]", vocab.index("[SEP]"))])
    return tok


def learn_vocabulary(counts: dict[str, int], vocab_size: int, special: list[str]) -> list[str]:
    """Special tokens, every character (word-initial and ``##`` continuation), then the pieces of the
    most frequent adjacent pairs, merged one at a time until ``vocab_size``: BPE as in `tokenizers`, with
    a heap of pair counts kept current as words change, and ties taken in the pieces' text order."""
    words = sorted(counts)
    splits = {w: [w[0], *("##" + c for c in w[1:])] for w in words}
    vocab = [*special, *sorted({p for s in splits.values() for p in s} - set(special))]
    known = set(vocab)
    pairs: Counter = Counter()
    holders: dict[tuple[str, str], set[str]] = defaultdict(set)  # pair -> the words it occurs in
    for w in words:
        for pair in zip(splits[w], splits[w][1:]):
            pairs[pair] += counts[w]
            holders[pair].add(w)
    heap = [(-n, pair) for pair, n in pairs.items()]
    heapq.heapify(heap)
    while len(vocab) < vocab_size and heap:
        n, pair = heapq.heappop(heap)
        if pairs.get(pair, 0) != -n or n == 0:
            continue  # stale entry: the pair's count changed since it was pushed
        a, b = pair
        piece = a + b.removeprefix("##")
        if piece not in known:
            vocab.append(piece)
            known.add(piece)
        changed = set()
        for w in sorted(holders.pop(pair)):
            old, new = splits[w], _merge(splits[w], a, b, piece)
            for p in zip(old, old[1:]):
                pairs[p] -= counts[w]
                changed.add(p)
            for p in zip(new, new[1:]):
                pairs[p] += counts[w]
                holders[p].add(w)
                changed.add(p)
            splits[w] = new
        for p in sorted(changed):
            if pairs[p] > 0:
                heapq.heappush(heap, (-pairs[p], p))
            else:
                pairs.pop(p, None)
                holders.pop(p, None)
    return vocab


def _merge(symbols: list[str], a: str, b: str, piece: str) -> list[str]:
    out, i = [], 0
    while i < len(symbols):
        if i + 1 < len(symbols) and symbols[i] == a and symbols[i + 1] == b:
            out.append(piece)
            i += 2
        else:
            out.append(symbols[i])
            i += 1
    return out
