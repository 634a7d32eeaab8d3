"""Exact, faster batch tokenisation for corpora with few distinct pre-tokens (Tibetan above all).

A byte-level BPE tokenizer first cuts text into pre-tokens with one regular expression, then encodes
each pre-token on its own. Tibetan splits into syllable-sized pre-tokens, and a megabyte of it holds
only a few thousand distinct ones, so most of the Rust encoder's time goes to repeating the same work.
:class:`PieceCachedEncoder` cuts with the same expression (the ``regex`` package), encodes each
distinct pre-token once with the tokenizer itself, and concatenates; the ids equal
``tokenizer.encode(text).ids``.

Used only under these conditions, which make the cut the tokenizer's own (tests check the ids on real
text and the cut on every accepted character); otherwise :func:`make_encoder` returns the plain
``encode_batch``:
- normaliser none or NFC; pre-tokeniser ByteLevel (GPT-2 expression, no prefix space) or
  Split(expression, isolated) followed by ByteLevel without expression; BPE model without dropout;
- documents that contain an added token, or a character outside the scripts whose Unicode classes
  (letter, number, space) are stable across the two regex engines' Unicode versions (Latin, Tibetan,
  general and CJK punctuation, CJK ideographs, full-width forms), go through ``encode_batch``.
Special tokens that the post-processor adds (a BOS, say) are added the same way.
"""

from __future__ import annotations

import json
import re
import unicodedata

# the expression the tokenizers library's ByteLevel pre-tokeniser uses when use_regex is set
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
# characters outside these blocks send a document to the plain encoder
_UNSTABLE_CHARS = re.compile("[^\x00-\u024f\u0f00-\u0fff\u2000-\u206f\u3000-\u303f\u4e00-\u9fef\uff00-\uffef]")
MAX_CACHE = 1 << 18  # distinct pre-tokens kept (Tibetan needs a few thousand); cleared when full


def split_pattern(config: dict) -> str | None:
    """The pre-tokenisation expression of a tokenizer.json ``config``, or None if the cached path
    would not be exact for it."""
    if (config.get("normalizer") or {"type": "NFC"})["type"] != "NFC":
        return None
    model = config.get("model") or {}
    if model.get("type") != "BPE" or model.get("dropout"):
        return None
    pre = config.get("pre_tokenizer") or {}
    if pre.get("type") == "ByteLevel" and pre.get("use_regex", True) and not pre.get("add_prefix_space"):
        return GPT2_PATTERN
    steps = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else []
    if len(steps) == 2 and steps[0].get("type") == "Split" and steps[1].get("type") == "ByteLevel":
        split, byte_level = steps
        if (split.get("behavior") == "Isolated" and not split.get("invert") and "Regex" in split.get("pattern", {})
                and not byte_level.get("use_regex") and not byte_level.get("add_prefix_space")):
            return split["pattern"]["Regex"]
    return None


class PieceCachedEncoder:
    """``encode_batch`` with a cache of pre-token ids (see the module docstring)."""

    name = "piece-cache"

    def __init__(self, tokenizer, pattern: str, nfc: bool, affixes: tuple[list[int], list[int]]):
        import regex

        self.tokenizer = tokenizer
        self._split = regex.compile(pattern).findall
        self._nfc = nfc
        added = [t.content for t in tokenizer.get_added_tokens_decoder().values()]
        self._added = re.compile("|".join(map(re.escape, added))) if added else None
        self._prefix, self._suffix = affixes
        self._cache: dict[str, list[int]] = {}

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        ids: list[list[int] | None] = [self._encode(t) for t in texts]
        plain = [i for i, x in enumerate(ids) if x is None]
        if plain:
            for i, e in zip(plain, self.tokenizer.encode_batch([texts[i] for i in plain], add_special_tokens=True)):
                ids[i] = e.ids
        return ids

    def _encode(self, text: str) -> list[int] | None:
        if _UNSTABLE_CHARS.search(text) or (self._added and self._added.search(text)):
            return None
        if self._nfc:
            text = unicodedata.normalize("NFC", text)
        pieces = self._split(text)
        cache = self._cache
        unique = set(pieces)
        missing = [p for p in unique if p not in cache]
        if missing:
            if len(cache) + len(missing) > MAX_CACHE:
                cache.clear()
                missing = list(unique)
            for piece, e in zip(missing, self.tokenizer.encode_batch(missing, add_special_tokens=False)):
                cache[piece] = e.ids
        ids = list(self._prefix)
        for piece in pieces:
            ids += cache[piece]
        ids += self._suffix
        return ids


def _special_affixes(tokenizer) -> tuple[list[int], list[int]] | None:
    """The ids the post-processor puts before and after a single sequence (e.g. [BOS], []), or None
    if it does more than add tokens around it."""
    bare = tokenizer.encode("ཀ ཁ", add_special_tokens=False).ids
    full = tokenizer.encode("ཀ ཁ", add_special_tokens=True).ids
    for start in range(len(full) - len(bare) + 1):
        if full[start : start + len(bare)] == bare:
            return full[:start], full[start + len(bare) :]
    return None


class PlainEncoder:
    name = "encode_batch"

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.tokenizer.encode_batch(texts, add_special_tokens=True)]


def make_encoder(tokenizer) -> PlainEncoder | PieceCachedEncoder:
    """An encoder whose ``encode_batch(texts)`` equals ``[e.ids for e in tokenizer.encode_batch(texts)]``
    (special tokens added): the cached one where that holds by construction, else the plain one."""
    config = json.loads(tokenizer.to_str())
    pattern, affixes = split_pattern(config), _special_affixes(tokenizer)
    if pattern is None or affixes is None:
        return PlainEncoder(tokenizer)
    nfc = (config.get("normalizer") or {}).get("type") == "NFC"
    return PieceCachedEncoder(tokenizer, pattern, nfc, affixes)
