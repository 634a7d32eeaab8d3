"""Byte-level BPE: the alphabet its vocabularies are spelled in, its BPE model alone, and
:class:`TwoPhaseBPE`, the exact two-step BPE of pre-tokens that hold several Tibetan syllables
(most of a Tibetan-extended tokenizer's new pre-tokens)."""

from __future__ import annotations

import itertools
import json
import re

import numpy as np

from megatron_tibetan.tokenizer import encoded
from megatron_tibetan.tokenizer.encoded import Encoded, fast_ids

def _byte_level_table() -> dict[int, str]:
    """GPT-2's byte -> printable character map, which byte-level BPE vocabularies are spelled in."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    extra = iter(range(256, 512))
    return {b: chr(b if b in printable else next(extra)) for b in range(256)}


_BYTE_LEVEL = str.maketrans({chr(b): c for b, c in _byte_level_table().items()})
FROM_BYTE_LEVEL = {c: b for b, c in _byte_level_table().items()}


def byte_level(text: str) -> str:
    """``text`` spelled as a byte-level BPE vocabulary spells it (its UTF-8 bytes, one character each)."""
    return text.encode("utf-8").decode("latin-1").translate(_BYTE_LEVEL)


def word_tokenizer(config: dict, merges: list | None = None, ignore_merges: bool | None = None):
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
HAS_SYLLABLE_CUT = re.compile("[\u0f0b\u0f0c][\u0f00-\u0fff]")  # finds the same pieces faster
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
        self._phase1 = word_tokenizer(config, merges=[list(m) for m in merges[: self.split]], ignore_merges=False)
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
                text = text_of(token)
                if text is not None and _SYLLABLE_CUT.search(text):
                    self._whole[text] = i
        self._syllables: dict[str, str] = {}

    def encode(self, pieces: list[str]) -> Encoded:
        """The ids of ``pieces`` (each with at least one syllable cut)."""
        parts = _syllable_parts(pieces)
        syllables = self._syllables
        missing = set(parts).difference(syllables)
        if missing:
            if len(syllables) + len(missing) > encoded.MAX_CACHE:  # read at call time (a test shrinks it)
                syllables.clear()
                missing = set(parts)
            syllables.update(_MARKS)
            missing = list(missing.difference(_MARKS))
            for s, ids in zip(missing, fast_ids(self._phase1, missing, False)):
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
        ids = np.fromiter(itertools.chain.from_iterable(fast_ids(self._phase2, groups, False)), dtype=np.int64)
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


def text_of(token: str) -> str | None:
    """The text a byte-level vocabulary entry spells, or None if its bytes are not whole UTF-8."""
    try:
        return bytes(FROM_BYTE_LEVEL[c] for c in token).decode("utf-8")
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
    if FROM_BYTE_LEVEL[right[0]] != 0xE0 or FROM_BYTE_LEVEL[left[-1]] not in (0x8B, 0x8C):
        return False
    lb = bytes(FROM_BYTE_LEVEL[c] for c in left)
    ends_like_tsheg = any(t.endswith(lb) if len(lb) <= len(t) else lb.endswith(t) for t in _TSHEG_BYTES)
    return ends_like_tsheg

