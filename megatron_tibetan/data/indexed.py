"""Megatron indexed datasets (``<prefix>.bin`` / ``<prefix>.idx``), written with megatron-core's own
``IndexedDatasetBuilder`` so Megatron-LM reads them unchanged.

The output appears only when complete: the builder writes ``<prefix>.partial.bin/.idx``, which are
renamed on success and removed on failure.
"""

from __future__ import annotations

import os

import numpy as np


def dataset_prefix(output_prefix: str, key: str = "text", level: str = "document") -> str:
    """Megatron-LM's naming: ``<output-prefix>_<json key>_<level>`` (``..._text_document``)."""
    return f"{output_prefix}_{key}_{level}"


def token_dtype(vocab_size: int) -> type[np.number]:
    """The token dtype Megatron-LM picks for this vocabulary size (uint16 below 65,500, else int32)."""
    from megatron.core.datasets.indexed_dataset import DType

    return DType.optimal_dtype(vocab_size)


class DocumentWriter:
    """Writes documents (one sequence each) to ``<prefix>.bin/.idx``; use as a context manager."""

    def __init__(self, prefix: str, dtype: type[np.number]):
        from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

        self.prefix = prefix
        self.dtype = dtype
        self._partial = prefix + ".partial"
        os.makedirs(os.path.dirname(os.path.abspath(prefix)), exist_ok=True)
        self._builder = IndexedDatasetBuilder(self._partial + ".bin", dtype=dtype)
        self.documents = 0
        self.tokens = 0

    def add(self, tokens: np.ndarray) -> None:
        self._builder.add_document(tokens, [len(tokens)])
        self.documents += 1
        self.tokens += len(tokens)

    def add_many(self, tokens: np.ndarray, lengths: np.ndarray) -> None:
        """Documents given as one concatenated token array and their lengths (one sequence each), appended
        at once as megatron-core's ``add_index`` appends a whole dataset: the same files as one
        ``add_document`` per document."""
        if int(np.sum(lengths)) != len(tokens):
            raise ValueError(f"{len(tokens)} tokens for documents of {int(np.sum(lengths))} in all")
        builder = self._builder
        builder.data_file.write(np.ascontiguousarray(tokens, dtype=self.dtype).data)
        first = len(builder.sequence_lengths)
        builder.sequence_lengths.extend(np.asarray(lengths).tolist())
        builder.document_indices.extend(range(first + 1, first + len(lengths) + 1))
        self.documents += len(lengths)
        self.tokens += len(tokens)

    def __enter__(self) -> "DocumentWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self._builder.finalize(self._partial + ".idx")
            for suffix in (".bin", ".idx"):
                os.replace(self._partial + suffix, self.prefix + suffix)
        else:
            self._builder.data_file.close()
            for suffix in (".bin", ".idx"):
                if os.path.exists(self._partial + suffix):
                    os.remove(self._partial + suffix)

