"""Streaming readers: documents from .txt and .jsonl files, plain or .gz/.xz/.zst compressed, and globs.

Readers yield :class:`RawDocument` records (undecoded bytes plus file and line), so memory does not grow
with the input and decoding can happen in worker processes. :func:`decode_document` turns one record
into its texts, or raises :class:`InputError` naming the file, line and key.

- ``.txt`` (any name not ending in ``.jsonl``/``.json``): one document per line, or with
  ``paragraphs=True`` one document per run of non-blank lines (blank-line separated).
  Blank lines are documents too in line mode (the filters count them as empty), so nothing is lost.
- ``.jsonl``/``.json``: one JSON object per line; each key in ``json_keys`` is a document text.
"""

from __future__ import annotations

import glob
import gzip
import json
import itertools
import lzma
import os
from pathlib import Path
from typing import BinaryIO, Iterable, Iterator, NamedTuple


class InputError(ValueError):
    """Bad input: the message names the file (and line, key) and what was expected."""


class RawDocument(NamedTuple):
    source: str  # the input file
    line: int  # 1-based line where the document starts
    data: bytes  # the undecoded bytes (line terminators removed)
    is_json: bool


def expand_inputs(patterns: Iterable[str | os.PathLike]) -> list[Path]:
    """Files named by ``patterns`` (paths or globs, ``**`` allowed), globs sorted; a pattern matching
    nothing or naming a missing file is an error."""
    paths: list[Path] = []
    for pattern in patterns:
        pattern = str(pattern)
        matches = sorted(glob.glob(pattern, recursive=True)) if glob.has_magic(pattern) else [pattern]
        if not matches:
            raise FileNotFoundError(f"input '{pattern}': no file matches this pattern")
        for match in matches:
            if not os.path.isfile(match):
                raise FileNotFoundError(f"input file not found: {match}")
            paths.append(Path(match))
    if not paths:
        raise InputError("no input files given")
    return paths


def _open_zstd(path: Path) -> BinaryIO:
    import io

    import zstandard

    raw = open(path, "rb")
    return io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(raw, closefd=True))


_OPENERS = {".gz": gzip.open, ".xz": lzma.open, ".zst": _open_zstd}
# what a broken compressed stream raises (gzip: BadGzipFile is an OSError; truncation: EOFError)
_STREAM_ERRORS: tuple[type[BaseException], ...] = (OSError, EOFError, lzma.LZMAError)
try:
    import zstandard

    _STREAM_ERRORS += (zstandard.ZstdError,)
except ImportError:  # pragma: no cover - zstandard is a dependency; .zst then fails on open
    pass


def open_binary(path: str | os.PathLike) -> BinaryIO:
    """``path`` opened for reading bytes, decompressed by its suffix (.gz, .xz, .zst)."""
    path = Path(path)
    opener = _OPENERS.get(path.suffix, open)
    return opener(path, "rb") if opener is not _open_zstd else opener(path)


def is_jsonl(path: str | os.PathLike) -> bool:
    name = Path(path).name
    for suffix in _OPENERS:
        name = name.removesuffix(suffix)
    return name.endswith((".jsonl", ".json"))


def _unreadable(path, line: int, error: BaseException) -> InputError:
    return InputError(f"{path}: unreadable stream after line {line}: {error}")


def read_documents(path: str | os.PathLike, paragraphs: bool = False) -> Iterator[RawDocument]:
    """The documents of one file, streamed. A corrupt or truncated compressed stream raises
    :class:`InputError` naming the file and the last line read."""
    path = Path(path)
    is_json = is_jsonl(path)
    lineno = 0
    with open_binary(path) as stream:  # a missing or unreadable file raises here, as itself
        try:
            if paragraphs and not is_json:
                yield from _paragraphs(stream, str(path))
                return
            for lineno, line in enumerate(stream, 1):
                yield RawDocument(str(path), lineno, line.rstrip(b"\r\n"), is_json)
        except _STREAM_ERRORS as error:
            raise _unreadable(path, lineno, error) from error


class LineBlock(NamedTuple):
    """Whole lines of one input file, undecoded (a chunk that preprocessing decodes at once)."""

    source: str
    first_line: int  # 1-based number of the first line
    data: bytes
    is_json: bool

    def documents(self) -> list[RawDocument]:
        """One document per line, as :func:`read_documents` gives them."""
        lines = self.data.split(b"\n")
        if self.data.endswith(b"\n"):
            lines.pop()
        return [RawDocument(self.source, self.first_line + i, line.rstrip(b"\r\n"), self.is_json)
                for i, line in enumerate(lines)]


def read_line_blocks(path: Path, chunk_bytes: int) -> Iterator[LineBlock]:
    """Blocks of about ``chunk_bytes`` of whole lines (a corrupt or truncated compressed stream raises
    :class:`InputError` with the file and the last line read, as :func:`read_documents` does)."""
    is_json, line = is_jsonl(path), 1
    with open_binary(path) as stream:
        while True:
            try:
                data = stream.read(chunk_bytes)
                if data and not data.endswith(b"\n"):
                    data += stream.readline()
            except _STREAM_ERRORS as error:
                raise _unreadable(path, line - 1, error) from error
            if not data:
                return
            yield LineBlock(str(path), line, data, is_json)
            line += data.count(b"\n")


def _paragraphs(stream: BinaryIO, source: str) -> Iterator[RawDocument]:
    lines: list[bytes] = []
    start = 0
    for lineno, line in enumerate(stream, 1):
        line = line.rstrip(b"\r\n")
        if line.strip():
            start = start or lineno
            lines.append(line)
        elif lines:
            yield RawDocument(source, start, b"\n".join(lines), False)
            lines, start = [], 0
    if lines:
        yield RawDocument(source, start, b"\n".join(lines), False)


def read_all(paths: Iterable[str | os.PathLike], paragraphs: bool = False) -> Iterator[RawDocument]:
    """The documents of every file in ``paths`` (globs expanded), in order."""
    for path in expand_inputs(paths):
        yield from read_documents(path, paragraphs)


def decode_document(doc: RawDocument, json_keys: tuple[str, ...] = ("text",)) -> tuple[str, ...]:
    """The texts of ``doc``: one per JSON key for .jsonl (a blank line gives empty texts), else the
    decoded line. Raises ``UnicodeDecodeError`` for invalid UTF-8 (callers count it as a skip) and
    :class:`InputError` for a malformed JSON line, a missing key or a non-string value."""
    text = doc.data.decode("utf-8")
    if not doc.is_json:
        return (text,)
    if not text.strip():
        return tuple("" for _ in json_keys)
    try:
        record = json.loads(text)
    except json.JSONDecodeError as error:
        raise InputError(f"{doc.source}:{doc.line}: malformed JSON line ({error})") from None
    if not isinstance(record, dict):
        raise InputError(f"{doc.source}:{doc.line}: expected a JSON object, got {type(record).__name__}")
    texts = []
    for key in json_keys:
        if key not in record:
            raise InputError(f"{doc.source}:{doc.line}: missing key '{key}' (keys: {', '.join(record) or 'none'})")
        value = record[key]
        if not isinstance(value, str):
            raise InputError(f"{doc.source}:{doc.line}: key '{key}' is {type(value).__name__}, expected a string")
        texts.append(value)
    return tuple(texts)


def iter_texts(
    paths: Iterable[str | os.PathLike], json_key: str = "text", paragraphs: bool = False, limit: int | None = None
) -> Iterator[str]:
    """Decoded document texts of ``paths`` (not normalised), the first ``limit`` of them (all when None).
    Invalid UTF-8 raises :class:`InputError` with file and line; :mod:`megatron_tibetan.data.preprocess`
    instead skips and counts such lines."""
    for doc in itertools.islice(read_all(paths, paragraphs), limit):
        try:
            yield decode_document(doc, (json_key,))[0]
        except UnicodeDecodeError as error:
            raise InputError(f"{doc.source}:{doc.line}: invalid UTF-8 ({error.reason} at byte {error.start})") from None


def read_lines(path: str | os.PathLike, limit: int | None = None) -> list[str]:
    """The lines of one text file (plain or .gz/.xz/.zst), without terminators, decoded: what evaluation,
    SFT data and tokenizer tools read when lines must stay aligned with another file. Only LF ends a line,
    as in the streaming readers. Invalid UTF-8 raises :class:`InputError` with file and line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    lines = []
    for doc in read_documents(path):
        if limit is not None and len(lines) >= limit:
            break
        try:
            lines.append(doc.data.decode("utf-8"))
        except UnicodeDecodeError as error:
            raise InputError(f"{doc.source}:{doc.line}: invalid UTF-8 ({error.reason} at byte {error.start})") from None
    return lines
