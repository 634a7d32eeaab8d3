"""Fertility of a tokenizer on a text file: tokens per Tibetan syllable, per character, per word, and
bytes per token. Lines are normalised first, as every stage of the pipeline does. For a tokenizer with
byte fallback (SentencePiece style), also how many tokens are byte pieces and in how many lines: the
characters its vocabulary lacks."""

from __future__ import annotations

import re
from pathlib import Path

from megatron_tibetan.text import count_syllables, normalize
from megatron_tibetan.text.readers import iter_texts

_BYTE_PIECE = re.compile(r"<0x[0-9A-F]{2}>")


def fertility(tokenizer, path: str | Path, max_lines: int | None = None) -> dict:
    """Counts and ratios for ``path`` (one segment per line) under ``tokenizer`` (no special tokens).
    ``tokens_per_syllable`` is None when the file has no Tibetan syllable."""
    lines = [normalize(line) for line in iter_texts([path], limit=max_lines)]
    ids = tokenizer(lines, add_special_tokens=False)["input_ids"]
    tokens = sum(len(x) for x in ids)
    counts = {
        "lines": len(lines),
        "tokens": tokens,
        "bytes": sum(len(line.encode("utf-8")) for line in lines),
        "chars": sum(len(line) - line.count(" ") for line in lines),  # normalised: spaces are single ASCII
        "words": sum(len(line.split()) for line in lines),
        "syllables": sum(count_syllables(line) for line in lines),
    }
    return {
        "file": str(path),
        **counts,
        "tokens_per_syllable": tokens / counts["syllables"] if counts["syllables"] else None,
        "bytes_per_token": counts["bytes"] / tokens if tokens else None,
        "tokens_per_char": tokens / counts["chars"] if counts["chars"] else None,
        "tokens_per_word": tokens / counts["words"] if counts["words"] else None,
        **_byte_fallback(tokenizer, ids),
    }


def _byte_fallback(tokenizer, ids: list[list[int]]) -> dict:
    if not getattr(tokenizer.backend_tokenizer.model, "byte_fallback", False):
        return {"byte_fallback_tokens": None, "byte_fallback_lines": None}
    byte_ids = {i for token, i in tokenizer.get_vocab().items() if _BYTE_PIECE.fullmatch(token)}
    per_line = [sum(i in byte_ids for i in line) for line in ids]
    return {"byte_fallback_tokens": sum(per_line), "byte_fallback_lines": sum(n > 0 for n in per_line)}
