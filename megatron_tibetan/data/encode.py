"""Exact, fast batch tokenisation for preprocessing: ids always equal ``tokenizer.encode(text).ids``.

:func:`select_encoder` picks, once at start-up, the fastest encoder that gives the tokenizer's own ids
on a sample (built-in edge cases plus the caller's first documents), and says why:

1. ``gigatoken`` (optional dependency, ``pip install .[fast]``): a Rust tokenizer that reads the
   tokenizer.json itself. Used where it loads the tokenizer (Qwen2.5 does; SmolLM2 and every
   Tibetan-extended tokenizer are refused) and its ids equal the tokenizer's on the sample.
2. ``piece-cache``: byte-level BPE tokenizers whose split expression the ``regex`` package reproduces
   (:func:`split_pattern`). Documents are cut into pre-tokens with that expression (run by Python's
   ``re``, about 2.5x faster, once its Unicode classes are spelled out: :func:`stdlib_pattern`), each
   distinct pre-token is encoded once and remembered, and the ids are assembled with numpy. Pre-tokens
   seen for the first time are encoded by the ``tokenizers`` BPE model directly (no second split, no
   offsets); those holding several Tibetan syllables (the run pre-tokens of Tibetan-extended tokenizers,
   mostly new) go through :class:`TwoPhaseBPE`, which does the same merges in two exact steps with less
   work, all the chunk's new runs in one call.
3. ``encode_batch``: the tokenizer itself, for everything else.

Whatever the encoder, a document that contains an added token or a character outside the scripts whose
Unicode classes (letter, number, space) are stable across regex engines' Unicode versions (Latin,
Tibetan, general and CJK punctuation, CJK ideographs, full-width forms) is encoded by the tokenizer
itself (checked on the whole batch at once, then per document only if something was found). Special
tokens that the post-processor adds (a BOS, say) are added the same way.
"""

from __future__ import annotations

import functools
import itertools
import json
import re
import unicodedata
import warnings
from typing import NamedTuple

import numpy as np

from megatron_tibetan.tokenizer.pretokenize import GPT2_PATTERN

# characters outside these blocks send a document to the tokenizer itself
_STABLE_RANGES = ((0x0, 0x24F), (0xF00, 0xFFF), (0x2000, 0x206F), (0x3000, 0x303F), (0x4E00, 0x9FEF), (0xFF00, 0xFFEF))
_UNSTABLE_CHARS = re.compile("[^" + "".join(f"{chr(a)}-{chr(b)}" for a, b in _STABLE_RANGES) + "]")
_UNSTABLE_TABLE = np.ones(0x110000, dtype=bool)  # per code point, as _UNSTABLE_CHARS (twice as fast on a batch)
for _first, _last in _STABLE_RANGES:
    _UNSTABLE_TABLE[_first : _last + 1] = False
MAX_CACHE = 1 << 18  # distinct pre-tokens (and syllables) kept (or one batch's, if more); cleared when full
# start-up sample: the scripts and edge cases preprocessing meets (the caller adds real documents)
SAMPLE_TEXTS = (
    "", " ", "  ", "it's  a   test\n\n x", "ཀ\n\nཁ ", "<|im_end|> ཀ་ཁ།", "<|endoftext|>", "emoji 😀 ཀ་",
    "\x1cཀ\x1f\x85ཁ", "ཀ ༡༢༣ 123 ١٢٣", "\u0f43\u0f73 \u0f42\u0fb7", "ཀ\u0f74\u0f7c", "I'LL don't", "\u3000全角　ཀ",
    "༄༅། །རྒྱ་གར་སྐད་དུ། བོད་སྐད་དུ། སངས་རྒྱས་དང་བྱང་ཆུབ་སེམས་དཔའ་ཐམས་ཅད་ལ་ཕྱག་འཚལ་ལོ། །",
    "འདི་སྐད་བདག་གིས་ཐོས་པ་དུས་གཅིག་ན། བཅོམ་ལྡན་འདས་རྒྱལ་པོའི་ཁབ་ན་བྱ་རྒོད་ཀྱི་ཕུང་པོའི་རི་ལ།",
    "The Blessed One was staying at Rājagṛha, on Vulture Peak, with 1,250 monks.",
    "世尊在王舍城耆闍崛山中，與大比丘眾千二百五十人俱。",
)


class Encoded(NamedTuple):
    """Token ids of a batch of documents: ``tokens`` concatenated, ``lengths`` per document."""

    lengths: np.ndarray  # int64
    tokens: np.ndarray  # int64 (uint32 from gigatoken)

    def as_lists(self) -> list[list[int]]:
        return [part.tolist() for part in np.split(self.tokens, np.cumsum(self.lengths)[:-1])] if len(self.lengths) else []


def _ragged(ids: list[list[int]]) -> Encoded:
    lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
    tokens = np.fromiter(itertools.chain.from_iterable(ids), dtype=np.int64, count=int(lengths.sum()))
    return Encoded(lengths, tokens)


def _gather(lengths: np.ndarray, starts: np.ndarray, flat: np.ndarray) -> np.ndarray:
    """``concatenate([flat[s : s + n] for s, n in zip(starts, lengths)])`` without a Python loop."""
    total = int(lengths.sum())
    out_starts = np.cumsum(lengths) - lengths
    return flat[np.repeat(starts - out_starts, lengths) + np.arange(total)]


def _merge(n: int, parts: list[tuple[np.ndarray, Encoded]]) -> Encoded:
    """Documents encoded in groups (each with the document indices it covers) back in input order."""
    index = np.concatenate([i for i, _ in parts])
    lengths = np.concatenate([e.lengths for _, e in parts])
    tokens = np.concatenate([e.tokens for _, e in parts])
    order = np.argsort(index, kind="stable")
    assert len(order) == n
    starts = np.cumsum(lengths) - lengths
    return Encoded(lengths[order], _gather(lengths[order], starts[order], tokens))


def _add_affixes(encoded: Encoded, prefix: list[int], suffix: list[int]) -> Encoded:
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


def _fast_ids(tokenizer, texts: list[str], add_special_tokens: bool) -> list[list[int]]:
    encode = getattr(tokenizer, "encode_batch_fast", tokenizer.encode_batch)  # the same ids, no offsets
    return [e.ids for e in encode(texts, add_special_tokens=add_special_tokens)]


class PlainEncoder:
    """The tokenizer's own ``encode_batch``."""

    name = "encode_batch"

    def __init__(self, tokenizer, reason: str = ""):
        self.tokenizer = tokenizer
        self.reason = reason

    def encode(self, texts: list[str]) -> Encoded:
        return _ragged(_fast_ids(self.tokenizer, texts, True))

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
        return bool(_UNSTABLE_CHARS.search(text) or (self._added and self._added.search(text)))

    def _any_plain(self, texts: list[str]) -> bool:
        """Whether some text may need the tokenizer itself (an added token may also span two texts)."""
        joined = "\n".join(texts)
        points = np.frombuffer(joined.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
        return bool(_UNSTABLE_TABLE[points].any() or (self._added and self._added.search(joined)))

    def encode(self, texts: list[str]) -> Encoded:
        plain = [i for i, t in enumerate(texts) if self._plain(t)] if self._any_plain(texts) else []
        if not plain:
            return _add_affixes(self._encode_fast(texts), self._prefix, self._suffix)
        plain_set = set(plain)
        fast = [i for i in range(len(texts)) if i not in plain_set]
        parts = [(np.array(plain, dtype=np.int64), _ragged(_fast_ids(self.tokenizer, [texts[i] for i in plain], True)))]
        if fast:
            encoded = _add_affixes(self._encode_fast([texts[i] for i in fast]), self._prefix, self._suffix)
            parts.append((np.array(fast, dtype=np.int64), encoded))
        return _merge(len(texts), parts)

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


def _byte_level_table() -> dict[int, str]:
    """GPT-2's byte -> printable character map, which byte-level BPE vocabularies are spelled in."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    extra = iter(range(256, 512))
    return {b: chr(b if b in printable else next(extra)) for b in range(256)}


_BYTE_LEVEL = str.maketrans({chr(b): c for b, c in _byte_level_table().items()})
_FROM_BYTE_LEVEL = {c: b for b, c in _byte_level_table().items()}


def byte_level(text: str) -> str:
    """``text`` spelled as a byte-level BPE vocabulary spells it (its UTF-8 bytes, one character each)."""
    return text.encode("utf-8").decode("latin-1").translate(_BYTE_LEVEL)


def _word_tokenizer(config: dict, merges: list | None = None, ignore_merges: bool | None = None):
    """The BPE model of ``config`` alone: a text in, its byte-level BPE ids out (no normaliser, no split,
    no special tokens)."""
    from tokenizers import Tokenizer

    word = {**config, "normalizer": None, "post_processor": None, "decoder": None, "added_tokens": [],
            "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False},
            "model": dict(config["model"])}
    if merges is not None:
        word["model"]["merges"] = merges
    if ignore_merges is not None:
        word["model"]["ignore_merges"] = ignore_merges
    return Tokenizer.from_str(json.dumps(word))


_TSHEG_BYTES = ("\u0f0b".encode(), "\u0f0c".encode())
# cut points of TwoPhaseBPE: after a tsheg, before a Tibetan character (inside a run pre-token)
_SYLLABLE_CUT = re.compile("(?<=[\u0f0b\u0f0c])(?=[\u0f00-\u0fff])")
_HAS_SYLLABLE_CUT = re.compile("[\u0f0b\u0f0c][\u0f00-\u0fff]")  # finds the same pieces faster
_SYMBOL_BASE = 0x10000  # TwoPhaseBPE spells token id i as chr(_SYMBOL_BASE + i)


class TwoPhaseBPE:
    """BPE of pre-tokens that hold several Tibetan syllables, in two exact phases.

    A BPE model applies its merges lowest rank first. Let phase 1 be the merges before the first one
    that could join across a syllable boundary (its left side a tail of a tsheg, its right side
    starting like a Tibetan character): phase 1 never crosses a boundary, so it is computed per
    syllable, and the few thousand distinct syllables are remembered. Phase 2, the remaining merges,
    then runs on the phase-1 tokens in an auxiliary ``tokenizers`` BPE model in which every token is one
    character and every phase-2 merge joins two such characters, so it merges token ids, not the run's
    bytes (about 2.2x fewer symbols for Qwen2.5 on Tibetan). Before that, each syllable's tokens take the
    phase-2 merges that must happen whatever its neighbours are (a pair ``(a, b)`` of rank r where no
    merge ranked below r takes ``a`` from the left or ``b`` from the right), which leaves about a third
    fewer symbols. This equals the tokenizer's own result when no phase-1 merge takes a token that a
    phase-2 merge makes (checked, ``ValueError`` otherwise): the phase-2 merges then start only after
    phase 1 has finished. The early merges need in addition that every phase-2 merge ranks after the
    merges that make its two sides (true of trained merges; checked, else skipped). For
    Tibetan-extended tokenizers phase 1 is the base tokenizer's merges and phase 2 the new ones. With
    ``ignore_merges`` a pre-token that is itself a vocabulary entry is that entry.
    """

    def __init__(self, config: dict):
        from tokenizers import Tokenizer, models

        model = config["model"]
        vocab: dict[str, int] = model["vocab"]
        merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
        self.split = next((i for i, (a, b) in enumerate(merges) if _may_cross_syllables(a, b)), len(merges))
        late = [(vocab[a], vocab[b], vocab[a + b]) for a, b in merges[self.split :]]
        made_late = {c for _, _, c in late}
        for a, b in merges[: self.split]:
            if vocab[a] in made_late or vocab[b] in made_late:
                raise ValueError(f"merge ({a!r}, {b!r}) takes a token that a later merge makes")
        self._phase1 = _word_tokenizer(config, merges=[list(m) for m in merges[: self.split]], ignore_merges=False)
        aux_vocab = {_symbol(i): i for i in vocab.values()}
        aux_vocab.update((_symbol(a) + _symbol(b), c) for a, b, c in late)
        self._end_id = max(aux_vocab.values()) + 1  # _PIECE_END_SYMBOL's: no merge takes it
        aux_vocab[_PIECE_END_SYMBOL] = self._end_id
        self._phase2 = Tokenizer(models.BPE(vocab=aux_vocab, merges=[(_symbol(a), _symbol(b)) for a, b, _ in late],
                                            ignore_merges=False))
        self._early = _EarlyMerges(late)
        # with ignore_merges, a pre-token that is a vocabulary entry is that entry (text -> id)
        self._whole = {}
        if model.get("ignore_merges"):
            for token, i in vocab.items():
                text = _text_of(token)
                if text is not None and _SYLLABLE_CUT.search(text):
                    self._whole[text] = i
        self._syllables: dict[str, str] = {}

    def encode(self, pieces: list[str]) -> Encoded:
        """The ids of ``pieces`` (each with at least one syllable cut)."""
        parts = _syllable_parts(pieces)
        syllables = self._syllables
        missing = set(parts).difference(syllables)
        if missing:
            if len(syllables) + len(missing) > MAX_CACHE:
                syllables.clear()
                missing = set(parts)
            syllables.update(_MARKS)
            missing = list(missing.difference(_MARKS))
            for s, ids in zip(missing, _fast_ids(self._phase1, missing, False)):
                syllables[s] = "".join(map(_symbol, self._early.apply(ids)))
        words = "".join(map(syllables.__getitem__, parts)).split(_PIECE_END_SYMBOL)
        words.pop()  # after the last piece's end mark
        # with ignore_merges, a piece that is a vocabulary entry is that entry
        whole = np.fromiter(map(self._whole.__contains__, pieces), dtype=bool, count=len(pieces)) \
            if self._whole.keys() & pieces else None
        if whole is not None:
            words = list(itertools.compress(words, ~whole))
        # phase 2 on groups of pieces, each piece's end marked (about 10% faster than a call per piece)
        groups = [_PIECE_END_SYMBOL.join(words[i : i + _PIECES_PER_CALL]) + _PIECE_END_SYMBOL
                  for i in range(0, len(words), _PIECES_PER_CALL)]
        ids = np.fromiter(itertools.chain.from_iterable(_fast_ids(self._phase2, groups, False)), dtype=np.int64)
        ends = np.flatnonzero(ids == self._end_id)
        lengths, tokens = np.diff(ends, prepend=-1) - 1, ids[ids != self._end_id]
        if whole is None:
            return Encoded(lengths, tokens)
        all_lengths = np.ones(len(pieces), dtype=np.int64)
        all_lengths[~whole] = lengths
        at = (np.cumsum(all_lengths) - all_lengths)[whole]
        out = np.empty(int(all_lengths.sum()), dtype=np.int64)
        out[at] = [self._whole[p] for p in itertools.compress(pieces, whole)]
        body = np.ones(len(out), dtype=bool)
        body[at] = False
        out[body] = tokens
        return Encoded(all_lengths, out)


_PIECES_PER_CALL = 32
_PIECE_END = "\x00"  # after each piece in _syllable_parts
_PIECE_END_SYMBOL = "\uffff"  # its symbol: no token's (TwoPhaseBPE spells ids from U+10000)
_MARKS = {_PIECE_END: _PIECE_END_SYMBOL, "": ""}
_TSHEG_BEFORE_OTHER = re.compile("[\u0f0b\u0f0c][^\u0f00-\u0fff\x00]")


def _syllable_parts(pieces: list[str]) -> list[str]:
    """The syllables of every piece (cut after each tsheg that a Tibetan character follows), each
    piece's followed by ``_PIECE_END``; empty strings may come in between."""
    joined = _PIECE_END.join(pieces) + _PIECE_END
    if joined.count(_PIECE_END) == len(pieces) and "\x01" not in joined and not _TSHEG_BEFORE_OTHER.search(joined):
        # every tsheg is a cut (or ends a piece): cut the whole batch with str methods, 2x faster
        return joined.replace("\u0f0b", "\u0f0b\x01").replace("\u0f0c", "\u0f0c\x01") \
            .replace(_PIECE_END, "\x01" + _PIECE_END + "\x01").split("\x01")
    parts = []
    for piece in pieces:
        parts += _SYLLABLE_CUT.split(piece)
        parts.append(_PIECE_END)
    return parts


def _symbol(i: int) -> str:
    """Token id ``i`` as one character of TwoPhaseBPE's auxiliary alphabet."""
    return chr(_SYMBOL_BASE + i)


def _text_of(token: str) -> str | None:
    """The text a byte-level vocabulary entry spells, or None if its bytes are not whole UTF-8."""
    try:
        return bytes(_FROM_BYTE_LEVEL[c] for c in token).decode("utf-8")
    except (KeyError, UnicodeDecodeError):
        return None


class _EarlyMerges:
    """The merges of a token sequence that happen whatever the tokens around it are (TwoPhaseBPE)."""

    def __init__(self, merges: list[tuple[int, int, int]]):
        self.pairs: dict[tuple[int, int], tuple[int, int]] = {}
        self._min_left: dict[int, int] = {}  # token -> lowest rank of a merge taking it as left side
        self._min_right: dict[int, int] = {}
        made_at: dict[int, int] = {}
        consistent = True
        for rank, (a, b, c) in enumerate(merges):
            if (a, b) in self.pairs or made_at.get(a, -1) >= rank or made_at.get(b, -1) >= rank:
                consistent = False
            self.pairs.setdefault((a, b), (rank, c))
            self._min_left.setdefault(a, rank)
            self._min_right.setdefault(b, rank)
        for rank, (a, b, c) in enumerate(merges):
            made_at[c] = max(made_at.get(c, -1), rank)
        # every merge must rank after all merges that make its sides (checked once all are known)
        for rank, (a, b, c) in enumerate(merges):
            if made_at.get(a, -1) >= rank or made_at.get(b, -1) >= rank:
                consistent = False
        self.enabled = consistent

    def apply(self, ids: list[int]) -> list[int]:
        if not self.enabled:
            return ids
        never = 1 << 62
        while True:
            out, i, changed = [], 0, False
            while i < len(ids):
                if i + 1 < len(ids):
                    found = self.pairs.get((ids[i], ids[i + 1]))
                    if found and self._min_right.get(ids[i], never) > found[0] < self._min_left.get(ids[i + 1], never):
                        out.append(found[1])
                        i += 2
                        changed = True
                        continue
                out.append(ids[i])
                i += 1
            if not changed:
                return out
            ids = out


def _may_cross_syllables(left: str, right: str) -> bool:
    """Whether merging the byte-level tokens ``left`` and ``right`` could join a syllable ending in a
    tsheg to a following Tibetan character: ``left`` ends like a tsheg, ``right`` starts with UTF-8's
    first byte of U+0800..U+0FFF."""
    if _FROM_BYTE_LEVEL[right[0]] != 0xE0 or _FROM_BYTE_LEVEL[left[-1]] not in (0x8B, 0x8C):
        return False
    lb = bytes(_FROM_BYTE_LEVEL[c] for c in left)
    ends_like_tsheg = any(t.endswith(lb) if len(lb) <= len(t) else lb.endswith(t) for t in _TSHEG_BYTES)
    return ends_like_tsheg


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
        self._word = _word_tokenizer(self._config)
        self._two_phase: TwoPhaseBPE | None = None
        if any(map(_HAS_SYLLABLE_CUT.search, self._split("ཀ་ཁ་ག"))):  # pre-tokens of several syllables
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
        if len(self._index) + len(missing) > MAX_CACHE:
            self._clear()
            missing = set(pieces)
        if missing:
            self._add(list(missing))
        rows = np.fromiter(map(self._index.__getitem__, pieces), dtype=np.int64, count=len(pieces))
        lengths = self._lengths[rows]
        tokens = _gather(lengths, self._starts[rows], self._ids)
        ends = np.cumsum(np.fromiter(map(len, per_doc), dtype=np.int64, count=len(per_doc)))
        cumulative = np.concatenate([[0], np.cumsum(lengths)])
        doc_lengths = cumulative[ends] - cumulative[np.concatenate([[0], ends[:-1]])]
        return Encoded(doc_lengths, tokens)

    def _clear(self) -> None:
        self._index.clear()
        self._used = 0

    def _add(self, pieces: list[str]) -> None:
        runs = list(filter(_HAS_SYLLABLE_CUT.search, pieces)) if self._two_phase is not None else []
        others = list(set(pieces).difference(runs)) if runs else pieces
        parts = [(others, _ragged(_fast_ids(self._word, others, False)))]
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


_CLASS_ESCAPES = frozenset("pPsSdDwW")


@functools.lru_cache(maxsize=None)
def _accepted_chars() -> list[str]:
    """The characters _encode_fast may see (built on first use)."""
    return [chr(c) for c in range(0x10000) if not _UNSTABLE_CHARS.match(chr(c))]


def _char_ranges(chars: list[str]) -> str:
    """``chars`` (sorted) as the inside of a character class."""
    out, i = [], 0
    while i < len(chars):
        j = i
        while j + 1 < len(chars) and ord(chars[j + 1]) == ord(chars[j]) + 1:
            j += 1
        out.append(re.escape(chars[i]) if i == j else f"{re.escape(chars[i])}-{re.escape(chars[j])}")
        i = j + 1
    return "".join(out)


def stdlib_pattern(pattern: str) -> str | None:
    """``pattern``, written for the ``regex`` package, rewritten for Python's ``re``: each Unicode class
    escape (``\\p{..}``, ``\\P{..}``, ``\\s``, ``\\S``, ``\\d``, ``\\w`` ...) becomes the set of
    characters it matches in ``regex`` among those the fast encoders see (no ``_UNSTABLE_CHARS``), so both
    engines cut those texts alike (tested on every such character). None where ``re`` might read the
    pattern otherwise: a class escape under case-insensitive matching, global inline flags, or anything
    ``re`` does not compile without a warning."""
    import regex

    out, i, in_class, case_insensitive = [], 0, False, []
    while i < len(pattern):
        c = pattern[i]
        if c == "\\":
            escape = pattern[i : i + 2]
            if escape[1:] in _CLASS_ESCAPES:
                if escape[1] in "pP":
                    escape = pattern[i : pattern.index("}", i) + 1] if pattern[i + 2 : i + 3] == "{" else pattern[i : i + 3]
                if any(case_insensitive):
                    return None
                matches = regex.compile(escape).match
                chars = _char_ranges([a for a in _accepted_chars() if matches(a)])
                out.append(chars if in_class else f"[{chars}]")
            else:
                out.append(escape)
            i += len(escape)
            continue
        if in_class:
            in_class = not (c == "]" and out[-1] not in ("[", "[^"))
        elif c == "[":
            in_class = True
            if pattern[i + 1 : i + 2] == "^":
                c, i = "[^", i + 1
        elif c == "(":
            flags = re.match(r"\(\?([a-zA-Z]*)(?:-[a-zA-Z]*)?([:)])", pattern[i:])
            if flags and flags.group(2) == ")":
                return None
            case_insensitive.append(bool(flags and "i" in flags.group(1)))
        elif c == ")" and case_insensitive:
            case_insensitive.pop()
        out.append(c)
        i += 1
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            return re.compile("".join(out)).pattern
    except (re.error, Warning):
        return None


def split_pattern(config: dict) -> str | None:
    """The pre-tokenisation expression of a tokenizer.json ``config``, or None if the piece cache
    would not be exact for it."""
    if (config.get("normalizer") or {"type": "NFC"})["type"] != "NFC":
        return None
    model = config.get("model") or {}
    if model.get("type") != "BPE" or model.get("dropout") or model.get("continuing_subword_prefix") \
            or model.get("end_of_word_suffix") or model.get("byte_fallback"):
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


def _special_affixes(tokenizer) -> tuple[list[int], list[int]] | None:
    """The ids the post-processor puts before and after a single sequence (e.g. [BOS], []), or None
    if it does more than add tokens around it."""
    bare = tokenizer.encode("ཀ ཁ", add_special_tokens=False).ids
    full = tokenizer.encode("ཀ ཁ", add_special_tokens=True).ids
    for start in range(len(full) - len(bare) + 1):
        if full[start : start + len(bare)] == bare:
            return full[:start], full[start + len(bare) :]
    return None


ENCODERS = ("gigatoken", "piece-cache", "encode_batch")


def build_encoder(tokenizer, name: str, reason: str = ""):
    """The encoder ``name`` (one of :data:`ENCODERS`) for ``tokenizer`` (a ``tokenizers.Tokenizer``),
    without the start-up check; :func:`select_encoder` chooses the name."""
    if name == "encode_batch":
        return PlainEncoder(tokenizer, reason)
    affixes = _special_affixes(tokenizer)
    if affixes is None:
        raise ValueError("the post-processor does more than add special tokens around the text")
    if name == "gigatoken":
        return GigatokenEncoder(tokenizer, affixes, reason)
    if name == "piece-cache":
        config = json.loads(tokenizer.to_str())
        pattern = split_pattern(config)
        if pattern is None:
            raise ValueError("normaliser, split or BPE options the piece cache does not reproduce")
        nfc = (config.get("normalizer") or {}).get("type") == "NFC"
        return PieceCachedEncoder(tokenizer, pattern, nfc, affixes, reason)
    raise ValueError(f"encoder {name!r}, expected one of {', '.join(ENCODERS)}")


def _mismatch(encoder, tokenizer, texts: list[str]) -> str | None:
    """None if ``encoder`` gives the tokenizer's own ids on every text, else which text differs."""
    ours = encoder.encode_batch(texts)
    reference = _fast_ids(tokenizer, texts, True)
    wrong = [i for i, (a, b) in enumerate(zip(ours, reference)) if a != b]
    if not wrong:
        return None
    return f"ids differ from the tokenizer's on {len(wrong)} of {len(texts)} sample texts (first: {texts[wrong[0]][:40]!r})"


def select_encoder(tokenizer, sample: list[str] = ()):
    """The fastest encoder whose ids equal the tokenizer's on :data:`SAMPLE_TEXTS` and ``sample`` (the
    caller's first documents); its ``reason`` says why it was chosen and why faster ones were not."""
    texts = list(SAMPLE_TEXTS) + list(sample)
    refused = []
    for name in ENCODERS[:-1]:
        try:
            encoder = build_encoder(tokenizer, name)
        except ImportError:
            refused.append(f"{name}: not installed (pip install megatron_tibetan[fast])")
            continue
        except Exception as error:  # a refusal is reported, not raised: the next encoder takes over
            refused.append(f"{name}: {str(error).strip().splitlines()[0]}")
            continue
        try:
            problem = _mismatch(encoder, tokenizer, texts)
        except Exception as error:
            problem = f"failed on the sample: {str(error).strip().splitlines()[0]}"
        if problem:
            refused.append(f"{name}: {problem}")
            continue
        encoder.reason = "; ".join(refused + [f"{name}: ids equal the tokenizer's on {len(texts)} sample texts"])
        return encoder
    return PlainEncoder(tokenizer, "; ".join(refused + ["encode_batch: the tokenizer itself"]))
