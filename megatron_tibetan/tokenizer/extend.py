"""Extend any base tokenizer with Tibetan tokens: the method follows the base, BPE merges for a
byte-level BPE base (:mod:`.bpe_extend`), SentencePiece pieces for a SentencePiece base
(:mod:`.sentencepiece_extend`). Both keep every base token's id and its encoding of text without Tibetan."""

from __future__ import annotations

from pathlib import Path

from megatron_tibetan.tokenizer.base import SENTENCEPIECE, base_kind
from megatron_tibetan.tokenizer.bpe_extend import extend_bpe
from megatron_tibetan.tokenizer.sentencepiece_extend import DEFAULT_PIECE_TYPE, extend_sentencepiece


def extend_tokenizer(base_spec: str, corpus: list[str | Path], num_new_tokens: int, output: str | Path,
                     max_lines_per_file: int | None | list[int | None] = None, min_frequency: int | None = None,
                     unit: str | None = None, piece_type: str | None = None) -> dict:
    """Train ``num_new_tokens`` Tibetan tokens on ``corpus`` and save the extended tokenizer in ``output``.
    The method follows the base: BPE merges for a byte-level BPE base (``min_frequency``, default 2, and
    ``unit``, default "run"), SentencePiece pieces for a SentencePiece base (``piece_type``, default "bpe").
    A setting that does not apply to the base is an error."""
    if base_kind(base_spec) == SENTENCEPIECE:
        ignored = [name for name, value in (("min_frequency", min_frequency), ("unit", unit)) if value is not None]
        if ignored:
            raise ValueError(f"{', '.join(ignored)}: byte-level BPE settings; base '{base_spec}' is a SentencePiece model")
        return extend_sentencepiece(base_spec, corpus, num_new_tokens, output, max_lines_per_file,
                                    piece_type or DEFAULT_PIECE_TYPE)
    if piece_type is not None:
        raise ValueError(f"piece_type: a SentencePiece setting; base '{base_spec}' is a byte-level BPE tokenizer")
    return extend_bpe(base_spec, corpus, num_new_tokens, output, max_lines_per_file,
                      2 if min_frequency is None else min_frequency, unit or "run")
