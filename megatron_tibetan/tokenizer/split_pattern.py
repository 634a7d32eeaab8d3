"""Which pre-tokenizer splits preprocessing can reproduce exactly: a tokenizer.json's split expression
(:func:`split_pattern`), its rewriting for Python's ``re`` (:func:`stdlib_pattern`), and the scripts
whose Unicode classes every regex engine agrees on (the rest goes to the tokenizer itself)."""

from __future__ import annotations

import functools
import re
import warnings

import numpy as np

from megatron_tibetan.tokenizer.pretokenize import GPT2_PATTERN

# characters outside these blocks send a document to the tokenizer itself
STABLE_RANGES = ((0x0, 0x24F), (0xF00, 0xFFF), (0x2000, 0x206F), (0x3000, 0x303F), (0x4E00, 0x9FEF), (0xFF00, 0xFFEF))
UNSTABLE_CHARS = re.compile("[^" + "".join(f"{chr(a)}-{chr(b)}" for a, b in STABLE_RANGES) + "]")
UNSTABLE_TABLE = np.ones(0x110000, dtype=bool)  # per code point, as UNSTABLE_CHARS (twice as fast on a batch)
for _first, _last in STABLE_RANGES:
    UNSTABLE_TABLE[_first : _last + 1] = False


_CLASS_ESCAPES = frozenset("pPsSdDwW")


@functools.lru_cache(maxsize=None)
def _accepted_chars() -> list[str]:
    """The characters _encode_fast may see (built on first use)."""
    return [chr(c) for c in range(0x10000) if not UNSTABLE_CHARS.match(chr(c))]


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
    characters it matches in ``regex`` among those the fast encoders see (no ``UNSTABLE_CHARS``), so both
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
