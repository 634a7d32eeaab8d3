"""Exact, fast batch tokenisation for preprocessing: ids always equal ``tokenizer.encode(text).ids``.

``encoder_choice.encoder_for`` picks, once at start-up, the fastest encoder that gives the tokenizer's own ids
on a sample (built-in edge cases plus the caller's first documents), and says why:

1. ``gigatoken`` (optional dependency, ``pip install .[fast]``): a Rust tokenizer that reads the
   tokenizer.json itself. Used where it loads the tokenizer (Qwen2.5 does; SmolLM2 and every
   Tibetan-extended tokenizer are refused) and its ids equal the tokenizer's on the sample.
2. ``piece-cache``: byte-level BPE tokenizers whose split expression the ``regex`` package reproduces
   (``split_pattern``). Documents are cut into pre-tokens with that expression (run by Python's
   ``re``, about 2.5x faster, once its Unicode classes are spelled out: ``stdlib_pattern``), each
   distinct pre-token is encoded once and remembered, and the ids are assembled with numpy. Pre-tokens
   seen for the first time are encoded by the ``tokenizers`` BPE model directly (no second split, no
   offsets); those holding several Tibetan syllables (the run pre-tokens of Tibetan-extended tokenizers,
   mostly new) go through ``byte_level.TwoPhaseBPE``, which does the same merges in two exact steps with less
   work, all the chunk's new runs in one call.
3. ``encode_batch``: the tokenizer itself, for everything else.

Whatever the encoder, a document that contains an added token or a character outside the scripts whose
Unicode classes (letter, number, space) are stable across regex engines' Unicode versions (Latin,
Tibetan, general and CJK punctuation, CJK ideographs, full-width forms) is encoded by the tokenizer
itself (checked on the whole batch at once, then per document only if something was found). Special
tokens that the post-processor adds (a BOS, say) are added the same way.
"""

from __future__ import annotations

import itertools
import json
import re
import unicodedata

import numpy as np

from megatron_tibetan.tokenizer.byte_level import HAS_SYLLABLE_CUT, TwoPhaseBPE, word_tokenizer
from megatron_tibetan.tokenizer import encoded
from megatron_tibetan.tokenizer.encoded import Encoded, add_affixes, fast_ids, gather, merge_encoded, ragged
from megatron_tibetan.tokenizer.split_pattern import UNSTABLE_CHARS, UNSTABLE_TABLE, stdlib_pattern

class PlainEncoder:
    """The tokenizer's own ``encode_batch``."""

    name = "encode_batch"

    def __init__(self, tokenizer, reason: str = ""):
        self.tokenizer = tokenizer
        self.reason = reason

    def encode(self, texts: list[str]) -> Encoded:
        return ragged(fast_ids(self.tokenizer, texts, True))

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return self.encode(texts).as_lists()


class _RoutedEncoder:
    """Sends documents with an added token or an unstable character to the tokenizer itself, the rest
    to :meth:`_encode_fast` (without the post-processor's special tokens, added here)."""

    def __init__(self, tokenizer, affixes: tuple[list[int], list[int]], reason: str = ""):
        self.tokenizer = tokenizer
        self.reason = reason
        added = [t.content for t in tokenizer.get_added_tokens_decoder().values()]
        self._added = re.compile("|".join(map(re.escape, added))) if added else None
        self._prefix, self._suffix = affixes

    def _plain(self, text: str) -> bool:
        return bool(UNSTABLE_CHARS.search(text) or (self._added and self._added.search(text)))

    def _any_plain(self, texts: list[str]) -> bool:
        """Whether some text may need the tokenizer itself (an added token may also span two texts)."""
        joined = "\n".join(texts)
        points = np.frombuffer(joined.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
        return bool(UNSTABLE_TABLE[points].any() or (self._added and self._added.search(joined)))

    def encode(self, texts: list[str]) -> Encoded:
        plain = [i for i, t in enumerate(texts) if self._plain(t)] if self._any_plain(texts) else []
        if not plain:
            return add_affixes(self._encode_fast(texts), self._prefix, self._suffix)
        plain_set = set(plain)
        fast = [i for i in range(len(texts)) if i not in plain_set]
        parts = [(np.array(plain, dtype=np.int64), ragged(fast_ids(self.tokenizer, [texts[i] for i in plain], True)))]
        if fast:
            fast_part = add_affixes(self._encode_fast([texts[i] for i in fast]), self._prefix, self._suffix)
            parts.append((np.array(fast, dtype=np.int64), fast_part))
        return merge_encoded(len(texts), parts)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return self.encode(texts).as_lists()

    def _encode_fast(self, texts: list[str]) -> Encoded:
        raise NotImplementedError


class GigatokenEncoder(_RoutedEncoder):
    """gigatoken's Rust encoder on the calling thread (each preprocessing worker is one core)."""

    name = "gigatoken"

    def __init__(self, tokenizer, affixes, reason: str = ""):
        import gigatoken

        super().__init__(tokenizer, affixes, reason)
        self._gigatoken = gigatoken.Tokenizer.from_json(tokenizer.to_str())

    def _encode_fast(self, texts: list[str]) -> Encoded:
        layout = self._gigatoken.encode_batch(texts, parallel=False).layout
        offsets = np.asarray(layout.offsets.data)
        tokens = np.asarray(layout.content.data)[offsets[0] : offsets[-1]]  # uint32, a view
        return Encoded(np.diff(offsets).astype(np.int64), tokens)



class PieceCachedEncoder(_RoutedEncoder):
    """Cuts with the tokenizer's own split expression, encodes each distinct pre-token once, and
    assembles the documents' ids from the cache with numpy (see the module docstring)."""

    name = "piece-cache"

    def __init__(self, tokenizer, pattern: str, nfc: bool, affixes, reason: str = ""):
        import regex

        super().__init__(tokenizer, affixes, reason)
        stdlib = stdlib_pattern(pattern)
        self._split = re.compile(stdlib).findall if stdlib else regex.compile(pattern).findall
        self._nfc = nfc
        self._config = json.loads(tokenizer.to_str())
        self._word = word_tokenizer(self._config)
        self._two_phase: TwoPhaseBPE | None = None
        if any(map(HAS_SYLLABLE_CUT.search, self._split("ཀ་ཁ་ག"))):  # pre-tokens of several syllables
            try:
                self._two_phase = TwoPhaseBPE(self._config)
            except ValueError as error:  # merges out of order: the BPE model does these pre-tokens whole
                self.reason = f"{self.reason}; no two-phase BPE: {error}".lstrip("; ")
        self._index: dict[str, int] = {}  # pre-token -> row of the cache
        self._starts = np.zeros(0, dtype=np.int64)  # per row: where its ids start in self._ids
        self._lengths = np.zeros(0, dtype=np.int64)
        self._ids = np.zeros(0, dtype=np.int64)
        self._used = 0  # ids stored

    def _encode_fast(self, texts: list[str]) -> Encoded:
        if self._nfc:
            texts = [unicodedata.normalize("NFC", t) for t in texts]
        per_doc = list(map(self._split, texts))
        pieces = list(itertools.chain.from_iterable(per_doc))
        missing = set(pieces).difference(self._index)
        if len(self._index) + len(missing) > encoded.MAX_CACHE:  # read at call time (a test shrinks it)
            self._clear()
            missing = set(pieces)
        if missing:
            self._add(list(missing))
        rows = np.fromiter(map(self._index.__getitem__, pieces), dtype=np.int64, count=len(pieces))
        lengths = self._lengths[rows]
        tokens = gather(lengths, self._starts[rows], self._ids)
        ends = np.cumsum(np.fromiter(map(len, per_doc), dtype=np.int64, count=len(per_doc)))
        cumulative = np.concatenate([[0], np.cumsum(lengths)])
        doc_lengths = cumulative[ends] - cumulative[np.concatenate([[0], ends[:-1]])]
        return Encoded(doc_lengths, tokens)

    def _clear(self) -> None:
        self._index.clear()
        self._used = 0

    def _add(self, pieces: list[str]) -> None:
        runs = list(filter(HAS_SYLLABLE_CUT.search, pieces)) if self._two_phase is not None else []
        others = list(set(pieces).difference(runs)) if runs else pieces
        parts = [(others, ragged(fast_ids(self._word, others, False)))]
        if runs:
            parts.append((runs, self._two_phase.encode(runs)))
        for new_pieces, new in parts:
            first, count = len(self._index), len(new.lengths)
            need_rows, need_ids = first + count, self._used + len(new.tokens)
            if need_rows > len(self._starts):
                size = max(need_rows, 2 * len(self._starts), 1024)
                self._starts = np.resize(self._starts, size)
                self._lengths = np.resize(self._lengths, size)
            if need_ids > len(self._ids):
                self._ids = np.resize(self._ids, max(need_ids, 2 * len(self._ids), 1 << 16))
            self._starts[first:need_rows] = self._used + np.cumsum(new.lengths) - new.lengths
            self._lengths[first:need_rows] = new.lengths
            self._ids[self._used : need_ids] = new.tokens
            self._used = need_ids
            self._index.update(zip(new_pieces, range(first, need_rows)))

