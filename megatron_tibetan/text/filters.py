"""Quality filters. Every dropped document is counted under one reason, checked in this order:

- ``invalid_utf8``: the raw bytes are not UTF-8 (reported with file and line by the caller).
- ``empty``: nothing is left after normalisation.
- ``low_tibetan_ratio``: less than ``min_tibetan_ratio`` of the non-space characters are Tibetan
  (U+0F00..U+0FFF), e.g. English notes or URLs in a Tibetan corpus.
- ``too_short``: fewer than ``min_chars`` characters after normalisation.
- ``duplicate``: exactly the same (normalised) text was already kept. Documents are compared by a
  64-bit BLAKE2b digest kept in a fixed-size table (:class:`DuplicateFilter`), so memory is bounded
  by ``dedup_memory_mb`` whatever the input size; the chance that two different documents share a
  digest is about n²/2⁶⁵ (1e-9 for 4 million documents).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from megatron_tibetan.text.segment import TextCounts, tibetan_ratio

DROP_REASONS = ("invalid_utf8", "empty", "low_tibetan_ratio", "too_short", "duplicate")


@dataclass(frozen=True)
class FilterConfig:
    min_chars: int = 8
    min_tibetan_ratio: float = 0.5
    dedup: bool = True
    dedup_memory_mb: float = 64.0


def check_text(text: str, config: FilterConfig) -> str | None:
    """The reason to drop a normalised ``text`` (duplicates aside), or None to keep it."""
    if not text:
        return "empty"
    if config.min_tibetan_ratio > 0 and tibetan_ratio(text) < config.min_tibetan_ratio:
        return "low_tibetan_ratio"
    if len(text) < config.min_chars:
        return "too_short"
    return None


def text_digest(texts: tuple[str, ...]) -> int:
    """A 64-bit digest of a document's texts (all JSON keys together), never 0 (0 marks a free slot)."""
    h = hashlib.blake2b(digest_size=8)
    for text in texts:
        h.update(text.encode("utf-8"))
        h.update(b"\x00")
    return int.from_bytes(h.digest(), "little") or 1


class DuplicateFilter:
    """Exact-duplicate detection over 64-bit digests in an open-addressing table of fixed size.

    The table holds ``memory_mb`` MiB (8 bytes a slot) and is filled to at most half, so lookups stay
    short. Once half full, new digests are still checked but no longer remembered; they are counted
    in ``not_remembered`` so the caller can report that deduplication became partial."""

    def __init__(self, memory_mb: float = 64.0):
        slots = 1 << max(4, int(memory_mb * 2**20 / 8).bit_length() - 1)  # a power of two within the budget
        self._table = np.zeros(slots, dtype=np.uint64)
        self._mask = slots - 1
        self._max_entries = slots // 2
        self.entries = 0
        self.not_remembered = 0

    @property
    def nbytes(self) -> int:
        return self._table.nbytes

    def seen(self, digest: int) -> bool:
        """True if ``digest`` was added before; otherwise remember it (while there is room)."""
        table, slot = self._table, digest & self._mask
        key = np.uint64(digest)
        while True:
            current = table[slot]
            if current == key:
                return True
            if current == 0:
                break
            slot = (slot + 1) & self._mask
        if self.entries < self._max_entries:
            table[slot] = key
            self.entries += 1
        else:
            self.not_remembered += 1
        return False


FILTER_REASONS = (None, "empty", "low_tibetan_ratio", "too_short")


def drop_reasons(counts: list[TextCounts], filters: FilterConfig) -> np.ndarray:
    """Per document (its texts' counts, one TextCounts per JSON key): 0 to keep it, else the index in
    ``FILTER_REASONS`` of the reason :func:`check_text` gives for the first
    text it drops."""
    reasons = np.zeros(len(counts[0].chars), dtype=np.int64)
    for c in counts:
        reason = np.where(c.chars < filters.min_chars, 3, 0)
        if filters.min_tibetan_ratio > 0:
            non_space = c.chars - c.spaces
            ratio = np.divide(c.tibetan, non_space, out=np.zeros(len(non_space)), where=non_space > 0)
            reason = np.where(ratio < filters.min_tibetan_ratio, 2, reason)
        reason = np.where(c.chars == 0, 1, reason)
        reasons = np.where(reasons == 0, reason, reasons)
    return reasons
