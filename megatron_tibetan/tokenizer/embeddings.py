"""Initial embedding rows for the tokens an extended tokenizer adds, for checkpoint conversion.

- ``mean``: every new row is the mean of the base rows (the published baseline).
- ``subtoken_mean``: a new token's row is the mean of the base rows of the base tokenizer's encoding
  of the token's text, so it starts where the old model already represented that string. For a
  SentencePiece base the token is its piece (``▁`` for a space): the base model's cut of the piece, with
  byte pieces for characters the base lacks (no dummy prefix is added, as inside a text).

The same function serves the input embedding and an untied output layer. Base rows (and any base
padding rows that no new token takes) stay bit-identical; rows past the old matrix are zero padding.
"""

from __future__ import annotations

import torch
from transformers.convert_slow_tokenizer import bytes_to_unicode

_BYTE_OF = {c: b for b, c in bytes_to_unicode().items()}


def token_text(tokenizer, token_id: int) -> str | None:
    """The text of one byte-level token, or None when its bytes are not whole UTF-8 characters."""
    token = tokenizer.convert_ids_to_tokens(token_id)
    try:
        return bytes(_BYTE_OF[c] for c in token).decode("utf-8")
    except (KeyError, UnicodeDecodeError):
        return None


def is_byte_level(tokenizer) -> bool:
    """Whether ``tokenizer`` spells tokens in GPT-2's byte alphabet (else: SentencePiece-style pieces)."""
    pre_tokenizer = tokenizer.backend_tokenizer.pre_tokenizer
    return pre_tokenizer is not None and b'"ByteLevel"' in pre_tokenizer.__getstate__()


def base_subtoken_ids(base_tokenizer, extended_tokenizer, token_id: int, byte_level: bool | None = None) -> list[int]:
    """Base ids for new token ``token_id``. Byte-level: the base encoding of its text; for a token that is
    not whole UTF-8 characters (or whose text the base does not reproduce), the base BPE model's cut of
    its bytes. SentencePiece: the base model's cut of the piece (byte pieces where the base lacks a
    character). ``byte_level``: :func:`is_byte_level` of the extended tokenizer, if known."""
    if byte_level is None:
        byte_level = is_byte_level(extended_tokenizer)
    if not byte_level:
        piece = extended_tokenizer.convert_ids_to_tokens(token_id)
        return [t.id for t in base_tokenizer.backend_tokenizer.model.tokenize(piece)]
    text = token_text(extended_tokenizer, token_id)
    if text is not None:
        ids = base_tokenizer.encode(text, add_special_tokens=False)
        if base_tokenizer.decode(ids) == text:
            return ids
    token = extended_tokenizer.convert_ids_to_tokens(token_id)
    return [t.id for t in base_tokenizer.backend_tokenizer.model.tokenize(token)]


def init_new_embeddings(base_tokenizer, extended_tokenizer, embedding: torch.Tensor, method: str = "subtoken_mean",
                        padded_vocab_size: int | None = None) -> torch.Tensor:
    """A ``[rows, hidden]`` matrix: ``embedding``'s rows for the base ids, new rows by ``method``
    ("subtoken_mean" or "mean"), zero rows past ``embedding``'s end. ``rows`` is ``padded_vocab_size``,
    by default the larger of the extended vocabulary and ``embedding`` (a padded base keeps its size)."""
    base_n, ext_n = len(base_tokenizer), len(extended_tokenizer)
    rows = padded_vocab_size or max(ext_n, embedding.shape[0])
    if method not in ("subtoken_mean", "mean"):
        raise ValueError(f"init_new_embeddings: method {method!r}, expected 'subtoken_mean' or 'mean'")
    if embedding.dim() != 2 or embedding.shape[0] < base_n:
        raise ValueError(f"init_new_embeddings: embedding of shape {tuple(embedding.shape)}, expected "
                         f"[>= {base_n} (base vocabulary), hidden]")
    if rows < ext_n:
        raise ValueError(f"init_new_embeddings: padded_vocab_size {rows} < extended vocabulary {ext_n}")
    _check_base_ids(base_tokenizer, extended_tokenizer)

    out = embedding.new_zeros(rows, embedding.shape[1])
    keep = min(rows, embedding.shape[0])
    out[:keep] = embedding[:keep]
    new_ids = range(base_n, ext_n)
    if method == "mean":
        out[base_n:ext_n] = embedding[:base_n].double().mean(0).to(embedding.dtype)
        return out
    byte_level = is_byte_level(extended_tokenizer)
    pieces = [base_subtoken_ids(base_tokenizer, extended_tokenizer, t, byte_level) for t in new_ids]
    empty = [t for t, p in zip(new_ids, pieces) if not p]
    if empty:  # a piece the base model cannot spell (no byte fallback): no rows to average
        raise ValueError(f"init_new_embeddings: the base tokenizer gives no tokens for new ids {empty[:5]} "
                         f"({extended_tokenizer.convert_ids_to_tokens(empty[:5])})")
    flat = torch.tensor([i for p in pieces for i in p], dtype=torch.long)
    owner = torch.repeat_interleave(torch.arange(len(pieces)), torch.tensor([len(p) for p in pieces]))
    sums = torch.zeros(len(pieces), embedding.shape[1], dtype=torch.float64).index_add_(
        0, owner, embedding[flat].double())
    counts = torch.tensor([len(p) for p in pieces], dtype=torch.float64).unsqueeze(1)
    out[base_n:ext_n] = (sums / counts).to(embedding.dtype)
    return out


def _check_base_ids(base_tokenizer, extended_tokenizer) -> None:
    ext = extended_tokenizer.get_vocab()
    moved = [tok for tok, i in base_tokenizer.get_vocab().items() if ext.get(tok) != i]
    if moved:
        raise ValueError(f"extended tokenizer does not keep the base ids ({len(moved)} tokens differ, "
                         f"e.g. {moved[:3]})")
    if len(extended_tokenizer) < len(base_tokenizer):
        raise ValueError("extended tokenizer is smaller than the base tokenizer")
