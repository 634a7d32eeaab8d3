"""Tibetan syllable segmentation: syllables are the runs between tshegs, shads, other Tibetan
punctuation and whitespace. Used for fertility (tokens per syllable) and syllable-level BLEU."""

from __future__ import annotations

import re

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


def tibetan_ratio(text: str) -> float:
    """Share of non-space characters in the Tibetan block U+0F00..U+0FFF (0.0 for empty text)."""
    # regex runs instead of a per-character loop: this is called on every document of a corpus
    non_space = len(text) - sum(map(len, _SPACE_RUN.findall(text)))
    if not non_space:
        return 0.0
    return sum(map(len, _TIBETAN_RUN.findall(text))) / non_space
