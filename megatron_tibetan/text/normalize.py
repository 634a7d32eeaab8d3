"""The project's one normalisation of text (Tibetan first, any script safe).

Preprocessing, tokenizer training, SFT data and evaluation all call :func:`normalize`, so training and
test text agree. The rules, in the order they apply:

1. Control characters (Unicode Cc that are not whitespace: whitespace controls such as tab, form feed or
   U+001C..U+001F separate words and are handled by rule 7) and zero-width / invisible format characters
   (ZWSP U+200B, ZWNJ U+200C, ZWJ U+200D, word joiner U+2060, BOM U+FEFF, soft hyphen U+00AD) are removed.
2. Deprecated Tibetan vowel signs that NFC keeps are spelled out: U+0F77 -> U+0FB2 U+0F71 U+0F80,
   U+0F79 -> U+0FB3 U+0F71 U+0F80 (Unicode discourages both; NFKC would do the same).
3. Unicode NFC. For Tibetan this decomposes the composition-excluded precomposed letters and vowels
   (U+0F43 GHA -> U+0F42 U+0FB7, U+0F73 -> U+0F71 U+0F72, ...) and puts combining marks into
   canonical order, so every spelling of a syllable has one code-point sequence.
4. The non-breaking tsheg U+0F0C becomes the ordinary tsheg U+0F0B (same syllable boundary).
5. Spaces around a tsheg are dropped (a space never belongs inside a syllable run).
6. A run of tshegs becomes one tsheg; a run of three or more shads becomes two (a double shad is
   meaningful, longer runs are noise).
7. Whitespace: every run of whitespace (including no-break and ideographic spaces) becomes one ASCII
   space, and the text is stripped at both ends. Newlines inside a document are kept as "\n" only when
   ``keep_newlines`` is set (runs of blank lines then become one newline).

With ``keep_layout`` rule 7 is not applied: whitespace layout is not Tibetan, and a chat turn or a
multi-line document keeps its newlines, blank lines, indentation and runs of spaces as written (only
``\r\n`` and a lone ``\r`` become ``\n``). Rules 1-6 still apply.
"""

from __future__ import annotations

import functools
import re
import unicodedata

import numpy as np

TSHEG = "\u0f0b"
NB_TSHEG = "\u0f0c"
SHAD = "\u0f0d"

_INVISIBLE = "\u200b\u200c\u200d\u2060\ufeff\u00ad"
# Cc that are not whitespace (whitespace is rule 7's); plus the invisible format characters above
_CONTROLS = "".join(chr(c) for c in [*range(0x20), *range(0x7F, 0xA0)] if not chr(c).isspace())
_REMOVE = re.compile("[" + re.escape(_CONTROLS) + _INVISIBLE + "]")
_DEPRECATED_VOWELS = str.maketrans({"\u0f77": "\u0fb2\u0f71\u0f80", "\u0f79": "\u0fb3\u0f71\u0f80"})
_SPACE_AROUND_TSHEG = re.compile(r"[^\S\n]*" + TSHEG + r"[^\S\n]*")
_TSHEG_RUN = re.compile(TSHEG + "{2,}")
_SHAD_RUN = re.compile(SHAD + "{3,}")
_SPACES = re.compile(r"[^\S\n]+")
_SPACES_ALL = re.compile(r"\s+")
_NEWLINE_SPACES = re.compile(r" ?\n ?")


def normalize(text: str, keep_newlines: bool = False, keep_layout: bool = False) -> str:
    """Normalise ``text`` by the rules in this module's docstring (``keep_layout``: rules 1-6 only)."""
    text = _REMOVE.sub("", text)
    text = text.translate(_DEPRECATED_VOWELS)
    text = unicodedata.normalize("NFC", text)
    text = text.replace(NB_TSHEG, TSHEG)
    text = _SPACE_AROUND_TSHEG.sub(TSHEG, text)
    text = _TSHEG_RUN.sub(TSHEG, text)
    text = _SHAD_RUN.sub(SHAD + SHAD, text)
    if keep_layout:
        return text.replace("\r\n", "\n").replace("\r", "\n")
    if keep_newlines:
        text = _NEWLINE_SPACES.sub("\n", _SPACES.sub(" ", text.replace("\r\n", "\n").replace("\r", "\n")))
        return re.sub(r"\n{2,}", "\n", text).strip()
    return _SPACES_ALL.sub(" ", text).strip()


# The same on a batch of texts (preprocessing's chunks).

_DOCUMENT_SEPARATOR = "\uffff"  # between documents joined for one search: a noncharacter no rule touches
# Where normalize() may change a text, one alternative per rule above:
# (1) control and format characters (every Cc and Cf, a superset of those it removes; anything beyond the
# BMP too, to be safe), (2) deprecated vowel signs, (4) the non-breaking tsheg, (5) a space at a tsheg,
# (6) tsheg runs and shad runs of three, (7) any whitespace but one space inside the text. (3), NFC, is
# checked with unicodedata.is_normalized. A text with none of these is its own normal form: each rule
# then leaves it as it is.
@functools.lru_cache(maxsize=None)
def _may_change() -> re.Pattern:
    cc_cf = "".join(c for c in map(chr, range(0x10000)) if unicodedata.category(c) in ("Cc", "Cf"))
    return re.compile(
        f"[{re.escape(cc_cf)}\\U00010000-\\U0010ffff\u0f77\u0f79\u0f0c]|[^\\S ]|  | \u0f0b|\u0f0b |\u0f0b\u0f0b"
        f"|\u0f0d\u0f0d\u0f0d|(?:^|{_DOCUMENT_SEPARATOR}) | (?:{_DOCUMENT_SEPARATOR}|$)")


def normalize_document(text: str, keep_layout: bool = True) -> str:
    """A document's normal form: a one-line document as one line (rule 7), a multi-line one keeping its
    layout (``keep_layout``, rules 1-6 only) or one newline between its lines."""
    multi_line = "\n" in text
    return normalize(text, keep_newlines=multi_line, keep_layout=keep_layout and multi_line)


def normalize_texts(texts: list[str], keep_layout: bool = True) -> list[str]:
    """``[normalize_document(t, keep_layout) for t in texts]``, normalising only the texts where a rule
    could change something (see ``_may_change``); the others are returned as they are (tested equal)."""
    joined = _DOCUMENT_SEPARATOR.join(texts)
    starts = np.cumsum([0] + [len(t) + 1 for t in texts])
    positions = [p for m in _may_change().finditer(joined) for p in (m.start(), m.end() - 1)]
    changed = set(np.searchsorted(starts, positions, side="right") - 1) if positions else set()
    # the separator never composes with a neighbour: the whole is NFC exactly when every text is
    if not unicodedata.is_normalized("NFC", joined):
        changed.update(i for i, t in enumerate(texts) if not unicodedata.is_normalized("NFC", t))
    if not changed:
        return texts
    texts = list(texts)
    for i in map(int, changed):
        texts[i] = normalize_document(texts[i], keep_layout)
    return texts
