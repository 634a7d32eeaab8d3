"""Megatron indexed datasets (``<prefix>.bin`` / ``<prefix>.idx``), written with megatron-core's own
``IndexedDatasetBuilder`` so Megatron-LM reads them unchanged.

The output appears only when complete: the builder writes ``<prefix>.partial.bin/.idx``, which are
renamed on success and removed on failure. A dataset is checked when it is opened
(:func:`check_dataset`): the sizes its index implies against the files' sizes.
"""

from __future__ import annotations

import os
import struct
from typing import NamedTuple

import numpy as np

from megatron_tibetan.text.readers import InputError


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



# Reading: the size check a cluster needs before the first step (a truncated copy, an .idx of another
# dataset), from a stat of each file and a few bytes of the .idx; nothing is read from the .bin.

_INDEX_MAGIC = b"MMIDIDX\x00\x00"
_HEADER_BYTES = 34  # magic 9, version 8, dtype code 1, sequence count 8, document count 8
_DTYPE_CODES = {1: np.uint8, 2: np.int8, 3: np.int16, 4: np.int32, 5: np.int64, 6: np.float64, 7: np.float32, 8: np.uint16}
WRITTEN_DTYPES = (np.uint16, np.int32, np.uint8)  # tokens (by vocabulary size) and SFT loss masks


class DatasetFileError(InputError):
    """An indexed dataset whose files do not agree; the message names the file, the expected and the found."""


class DatasetSummary(NamedTuple):
    prefix: str
    dtype: type
    sequences: int
    documents: int
    tokens: int  # elements in the .bin


def check_dataset(prefix: str, dtypes: tuple = WRITTEN_DTYPES) -> DatasetSummary:
    """Check ``<prefix>.idx`` against ``<prefix>.bin`` without reading the data: the .idx header is
    megatron-core's (version 1, a dtype in ``dtypes``), its size is what its sequence and document counts
    imply, its document index ends at its sequence count, and the .bin holds exactly the tokens its
    last sequence pointer and length describe. Raises :class:`DatasetFileError` or FileNotFoundError."""
    idx, bin_ = f"{prefix}.idx", f"{prefix}.bin"
    for path in (idx, bin_):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path}: no such file (an indexed dataset is {prefix}.bin + .idx)")
    idx_size, bin_size = os.path.getsize(idx), os.path.getsize(bin_)
    with open(idx, "rb") as f:
        header = f.read(_HEADER_BYTES)
        if len(header) < _HEADER_BYTES or header[:9] != _INDEX_MAGIC:
            raise DatasetFileError(f"{idx}: not a Megatron index file (expected the header {_INDEX_MAGIC!r} and "
                                   f"{_HEADER_BYTES} header bytes, found {header[:9]!r} in {idx_size} bytes)")
        version, code = struct.unpack("<QB", header[9:18])
        sequences, documents = struct.unpack("<QQ", header[18:34])
        dtype = _DTYPE_CODES.get(code)
        if version != 1 or dtype not in dtypes:
            raise DatasetFileError(f"{idx}: index version {version}, dtype code {code} ({getattr(dtype, '__name__', '?')}); "
                                   f"expected version 1 and one of {', '.join(d.__name__ for d in dtypes)}")
        expected_idx = _HEADER_BYTES + 12 * sequences + 8 * documents
        if idx_size != expected_idx:
            raise DatasetFileError(f"{idx}: {idx_size} bytes, but its header ({sequences} sequences, {documents} "
                                   f"document boundaries) implies {expected_idx}: the file is truncated or damaged")
        itemsize = np.dtype(dtype).itemsize
        tokens = 0
        if sequences:
            f.seek(_HEADER_BYTES + 4 * (sequences - 1))
            (last_length,) = struct.unpack("<i", f.read(4))
            f.seek(_HEADER_BYTES + 4 * sequences + 8 * (sequences - 1))
            (last_pointer,) = struct.unpack("<q", f.read(8))
            tokens = last_pointer // itemsize + last_length
        f.seek(expected_idx - 8)
        last_document = struct.unpack("<q", f.read(8))[0] if documents else 0
    if documents and last_document != sequences:
        raise DatasetFileError(f"{idx}: the document index ends at sequence {last_document}, but the file has "
                               f"{sequences} sequences: the index is damaged")
    if bin_size != tokens * itemsize:
        raise DatasetFileError(f"{bin_}: {bin_size} bytes, but {idx} describes {tokens * itemsize} ({tokens} "
                               f"{dtype.__name__} tokens in {sequences} sequences): the .bin is truncated or the .idx "
                               f"belongs to another dataset; copy or rebuild both files together")
    return DatasetSummary(prefix, dtype, sequences, max(documents - 1, 0), tokens)
