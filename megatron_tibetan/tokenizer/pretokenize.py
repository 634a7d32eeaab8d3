"""Route Tibetan syllables (or tsheg-joined runs of them) through a byte-level BPE pre-tokenizer whole.

Qwen2.5's and GPT-2's split patterns treat Tibetan vowel signs and subjoined letters (Unicode Mn) as
non-letters, so a syllable is cut into pieces that no merge can join again. We prepend Tibetan
alternatives to the base pattern:

- with ``unit="syllable"``: a syllable with its trailing tsheg (``བོད་``), optionally preceded
  by one space; new tokens are then syllables or pieces of one;
- with ``unit="run"`` (default): a run of tsheg-joined syllables up to the next punctuation or space
  (``བོད་ཀྱི་སྐད་ཡིག་``), so that new tokens may span several syllables (words, frequent phrases);
- in both, a run of Tibetan punctuation (shads, head marks, a stray tsheg), spaces inside the run and one
  trailing space included (``། །``).

These alternatives only match Tibetan characters, so text without Tibetan is split exactly as before.
"""

from __future__ import annotations

import copy

from megatron_tibetan.text import segment

# GPT-2's pattern, which tokenizers' ByteLevel(use_regex=True) applies internally (the one copy:
# tokenizer.split_pattern splits with it too).
GPT2_PATTERN = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"

_SYL = segment.TIBETAN_SYLLABLE_CHARS
_PUNCT = segment.TIBETAN_PUNCT
_TSHEG = "[\u0f0b\u0f0c]"
UNITS = {
    "syllable": f" ?[{_SYL}]+{_TSHEG}?",
    "run": f" ?[{_SYL}]+(?:{_TSHEG}[{_SYL}]+)*{_TSHEG}?",
}


def tibetan_pattern(unit: str = "run") -> str:
    """The Tibetan alternatives (a regex) for pre-tokens of ``unit`` ("syllable" or "run")."""
    if unit not in UNITS:
        raise ValueError(f"Tibetan pre-token unit {unit!r}, expected one of {', '.join(UNITS)}")
    return f"{UNITS[unit]}|(?:[{_PUNCT}]+ ?)+"


def tibetan_pre_tokenizer(pre_tokenizer: dict, unit: str = "run") -> dict:
    """A copy of a tokenizer.json ``pre_tokenizer`` with the Tibetan alternatives for ``unit`` in front
    of its split pattern. Supports a ``Split`` with a regex (Qwen2/2.5, Llama 3) and ``ByteLevel`` with
    ``use_regex`` (GPT-2, SmolLM2), alone or inside a ``Sequence``."""
    pre = copy.deepcopy(pre_tokenizer)
    if not _rewrite(pre, tibetan_pattern(unit)):
        raise ValueError(
            f"pre-tokenizer {pre_tokenizer.get('type') if pre_tokenizer else None}: no regex split found to "
            "extend (expected a Split with a Regex pattern or ByteLevel with use_regex)"
        )
    return pre


def _rewrite(pre: dict | None, tibetan: str) -> bool:
    """Rewrite ``pre`` in place; True when its split pattern now leads with the Tibetan alternatives."""
    if not pre:
        return False
    kind = pre.get("type")
    if kind == "Sequence":
        return any(_rewrite(child, tibetan) for child in pre["pretokenizers"])  # the first split only
    if kind == "Split" and "Regex" in pre["pattern"]:
        if pre["behavior"] != "Isolated" or pre.get("invert"):
            raise ValueError(f"pre-tokenizer Split with behavior {pre['behavior']}: only Isolated is supported")
        pre["pattern"]["Regex"] = f"{tibetan}|{pre['pattern']['Regex']}"
        return True
    if kind == "ByteLevel" and pre.get("use_regex", True):
        replacement = _bytelevel_as_split(dict(pre), tibetan)
        pre.clear()
        pre.update(replacement)
        return True
    return False


def _bytelevel_as_split(byte_level: dict, tibetan: str) -> dict:
    # ByteLevel(use_regex=True) == Split(GPT-2 pattern, Isolated) then ByteLevel(use_regex=False),
    # as long as no prefix space is added (it would then be added to every piece)
    if byte_level.get("add_prefix_space"):
        raise ValueError("pre-tokenizer ByteLevel with add_prefix_space=True is not supported")
    split = {"type": "Split", "pattern": {"Regex": f"{tibetan}|{GPT2_PATTERN}"},
             "behavior": "Isolated", "invert": False}
    return {"type": "Sequence", "pretokenizers": [split, {**byte_level, "use_regex": False}]}
