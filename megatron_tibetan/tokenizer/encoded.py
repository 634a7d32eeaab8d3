"""Token ids of a batch of documents as two flat arrays (ids concatenated, length per document), and
the ``tokenizers`` call that fills them: what every preprocessing encoder returns."""

from __future__ import annotations

import itertools
from typing import NamedTuple

import numpy as np

MAX_CACHE = 1 << 18  # distinct pre-tokens (and syllables) kept (or one batch's, if more); cleared when full


class Encoded(NamedTuple):
    """Token ids of a batch of documents: ``tokens`` concatenated, ``lengths`` per document."""

    lengths: np.ndarray  # int64
    tokens: np.ndarray  # int64 (uint32 from gigatoken)

    def as_lists(self) -> list[list[int]]:
        return [part.tolist() for part in np.split(self.tokens, np.cumsum(self.lengths)[:-1])] if len(self.lengths) else []


def ragged(ids: list[list[int]]) -> Encoded:
    lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
    tokens = np.fromiter(itertools.chain.from_iterable(ids), dtype=np.int64, count=int(lengths.sum()))
    return Encoded(lengths, tokens)


def gather(lengths: np.ndarray, starts: np.ndarray, flat: np.ndarray) -> np.ndarray:
    """``concatenate([flat[s : s + n] for s, n in zip(starts, lengths)])`` without a Python loop."""
    total = int(lengths.sum())
    out_starts = np.cumsum(lengths) - lengths
    return flat[np.repeat(starts - out_starts, lengths) + np.arange(total)]


def merge_encoded(n: int, parts: list[tuple[np.ndarray, Encoded]]) -> Encoded:
    """Documents encoded in groups (each with the document indices it covers) back in input order."""
    index = np.concatenate([i for i, _ in parts])
    lengths = np.concatenate([e.lengths for _, e in parts])
    tokens = np.concatenate([e.tokens for _, e in parts])
    order = np.argsort(index, kind="stable")
    assert len(order) == n
    starts = np.cumsum(lengths) - lengths
    return Encoded(lengths[order], gather(lengths[order], starts[order], tokens))


def add_affixes(encoded: Encoded, prefix: list[int], suffix: list[int]) -> Encoded:
    if not prefix and not suffix:
        return encoded
    lengths = encoded.lengths + len(prefix) + len(suffix)
    out = np.empty(int(lengths.sum()), dtype=np.int64)
    starts = np.cumsum(lengths) - lengths
    body = np.ones(len(out), dtype=bool)
    for k, token in enumerate(prefix):
        out[starts + k] = token
        body[starts + k] = False
    for k, token in enumerate(suffix):
        at = starts + len(prefix) + encoded.lengths + k
        out[at] = token
        body[at] = False
    out[body] = encoded.tokens
    return Encoded(lengths, out)


def fast_ids(tokenizer, texts: list[str], add_special_tokens: bool) -> list[list[int]]:
    encode = getattr(tokenizer, "encode_batch_fast", tokenizer.encode_batch)  # the same ids, no offsets
    return [e.ids for e in encode(texts, add_special_tokens=add_special_tokens)]

