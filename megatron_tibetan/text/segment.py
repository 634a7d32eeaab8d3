"""Tibetan syllable segmentation: syllables are the runs between tshegs, shads, other Tibetan
punctuation and whitespace. Used for fertility (tokens per syllable) and syllable-level BLEU."""

from __future__ import annotations

import functools
import re
from typing import NamedTuple

import numpy as np

# tsheg, non-breaking tsheg, the shads U+0F0D..U+0F12, gter tsheg U+0F14, and other Tibetan marks
# (head marks U+0F01..U+0F0A, U+0F13, U+0F34, U+0F36, U+0F38, brackets U+0F3A..U+0F3D, U+0F85, U+0FD0..U+0FDA)
TIBETAN_PUNCT = "\u0f01-\u0f14\u0f34\u0f36\u0f38\u0f3a-\u0f3d\u0f85\u0fd0-\u0fda"
_SEPARATOR = "\u0f0b\u0f0c"
TIBETAN_SYLLABLE_CHARS = "\u0f00\u0f15-\u0f33\u0f35\u0f37\u0f39\u0f3e-\u0f84\u0f86-\u0fcf"
_SYLLABLE = re.compile(f"[{TIBETAN_SYLLABLE_CHARS}]+")
_TIBETAN_RUN = re.compile("[\u0f00-\u0fff]+")
_SPACE_RUN = re.compile(r"\s+")
_TOKEN = re.compile(f"[{TIBETAN_SYLLABLE_CHARS}]+|[{TIBETAN_PUNCT}]|[^\\s{TIBETAN_PUNCT}{TIBETAN_SYLLABLE_CHARS}]+")


def syllables(text: str) -> list[str]:
    """The Tibetan syllables of ``text`` (separators and non-Tibetan characters are not syllables)."""
    return _SYLLABLE.findall(text)


def count_syllables(text: str) -> int:
    return len(_SYLLABLE.findall(text))


def segment_for_bleu(text: str) -> str:
    """Space-separated tokens: each Tibetan syllable, each Tibetan punctuation mark except the tsheg
    (a separator, like a space), and each run of other non-space characters."""
    return " ".join(t for t in _TOKEN.findall(text) if t not in _SEPARATOR)


def tibetan_only(text: str) -> str:
    """The Tibetan runs of ``text`` (U+0F00..U+0FFF), joined by single spaces: what is left of an output
    once digits, Latin and Chinese copied from the source are taken out."""
    return " ".join(_TIBETAN_RUN.findall(text))


def tibetan_ratio(text: str) -> float:
    """Share of non-space characters in the Tibetan block U+0F00..U+0FFF (0.0 for empty text)."""
    # regex runs instead of a per-character loop: this is called on every document of a corpus
    non_space = len(text) - sum(map(len, _SPACE_RUN.findall(text)))
    if not non_space:
        return 0.0
    return sum(map(len, _TIBETAN_RUN.findall(text))) / non_space


@functools.lru_cache(maxsize=None)
def _code_point_tables() -> dict[str, np.ndarray]:
    """Per code point: whitespace (re's \\s, which normalize and tibetan_ratio use), Tibetan block, syllable
    character (megatron_tibetan.text.segment's class)."""
    every = "".join(map(chr, range(0x10000)))  # no whitespace or Tibetan beyond the BMP
    tables = {name: np.zeros(0x110000, dtype=bool) for name in ("space", "tibetan", "syllable")}
    tables["tibetan"][0x0F00:0x1000] = True
    for name, expression in (("space", r"\s"), ("syllable", f"[{TIBETAN_SYLLABLE_CHARS}]")):
        tables[name][list(map(ord, re.findall(expression, every)))] = True
    return tables


class TextCounts(NamedTuple):
    """Per text: characters, UTF-8 bytes, syllables (``count_syllables``) and, with ``tibetan``, the
    characters in the Tibetan block and the whitespace characters (``tibetan_ratio``'s numbers)."""

    chars: np.ndarray
    utf8_bytes: np.ndarray
    syllables: np.ndarray
    tibetan: np.ndarray | None
    spaces: np.ndarray | None

    @classmethod
    def of(cls, texts: list[str], tibetan: bool = True) -> "TextCounts":
        tables = _code_point_tables()
        chars = np.fromiter(map(len, texts), dtype=np.int64, count=len(texts))
        # the texts' code points, one separator after each (no syllable, Tibetan or space character)
        points = np.frombuffer("\x00".join(texts + [""]).encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
        starts = np.cumsum(chars + 1) - (chars + 1)

        def per_text(values: np.ndarray) -> np.ndarray:  # sums over each text and its separator
            if not len(texts):
                return np.zeros(0, dtype=np.int64)
            return np.add.reduceat(values.view(np.uint8), starts, dtype=np.int64)

        in_syllable = tables["syllable"][points]
        syllable_starts = in_syllable.copy()
        syllable_starts[1:] &= ~in_syllable[:-1]
        syllables = per_text(syllable_starts)
        extra_bytes = (points >= 0x80).view(np.uint8) + (points >= 0x800).view(np.uint8) + (points >= 0x10000).view(np.uint8)
        utf8 = chars + per_text(extra_bytes)
        if not tibetan:
            return cls(chars, utf8, syllables, None, None)
        return cls(chars, utf8, syllables, per_text(tables["tibetan"][points]), per_text(tables["space"][points]))
