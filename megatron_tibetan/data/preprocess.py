"""Raw Tibetan corpora -> Megatron indexed datasets (``<prefix>_<key>_document.bin/.idx``) + stats.

The pipeline, per chunk of about ``chunk_bytes`` of input:

    main process: read + decompress whole lines (undecoded, not split) ──► worker pool (ordered): split
    and decode the lines, parse JSON, normalise, filter, count, tokenise (the encoder that
    :func:`megatron_tibetan.tokenizer.encoder_choice.encoder_for` chose at start-up: gigatoken, the pre-token
    cache or the tokenizer itself, always the tokenizer's own ids), pack the tokens into one numpy
    array ◄── main process: drop exact duplicates, append the chunk through megatron-core's
    IndexedDatasetBuilder

Every step works on the whole chunk, not document by document: one decode and one ``split`` for the
lines, one encoder call, the filters and counts with numpy over the chunk's code points, one write.
Normalisation runs only on the documents where one of its rules could change something (found with
one search over the chunk; :func:`megatron_tibetan.text.normalize.normalize_texts`); the rest are already
normal.

Chunks are consumed in submission order, so the output does not depend on ``workers``. At most
``2 * workers + 2`` chunks are in flight, so memory is bounded by the chunk size, each worker's
pre-token cache (``tokenizer.encoded.MAX_CACHE`` entries), the duplicate table (``dedup_memory_mb``) and
megatron-core's index lists (Python lists, about 70 bytes a document), not by the input size.
Each worker encodes on one thread (``TOKENIZERS_PARALLELISM=false``): ``workers`` is the core count.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import multiprocessing
import operator
import os
import sys
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, NamedTuple

import numpy as np

from megatron_tibetan.tokenizer.encoder_choice import encoder_for
from megatron_tibetan.data.indexed import DocumentWriter, dataset_prefix, token_dtype
from megatron_tibetan.text.filters import DROP_REASONS, FILTER_REASONS, DuplicateFilter, FilterConfig, drop_reasons, text_digest
from megatron_tibetan.text.normalize import normalize_document, normalize_texts
from megatron_tibetan.text.readers import (
    InputError, LineBlock, RawDocument, decode_document, expand_inputs, is_jsonl, read_documents, read_line_blocks,
)
from megatron_tibetan.text.segment import TextCounts

MAX_INVALID_REPORTED = 100  # invalid UTF-8 locations kept in stats.json (all are counted)


@dataclass(frozen=True)
class PreprocessConfig:
    inputs: tuple[str, ...]
    output_prefix: str
    tokenizer: str
    workers: int = 1
    json_keys: tuple[str, ...] = ("text",)
    append_eod: bool = False
    normalize: bool = True
    keep_layout: bool = True  # a multi-line document keeps its whitespace layout (text.normalize_document)
    paragraphs: bool = False  # .txt: blank-line separated documents instead of one per line
    filters: FilterConfig = field(default_factory=FilterConfig)
    limit: int | None = None  # only the first N input documents
    chunk_bytes: int = 1 << 20
    progress: bool = True


class _WorkerSpec(NamedTuple):
    tokenizer_json: str
    json_keys: tuple[str, ...]
    normalize: bool
    keep_layout: bool
    filters: FilterConfig
    eod_id: int | None  # appended to every document when set
    encoder: str  # chosen once by encoder_for in the main process


class _Chunk(NamedTuple):
    """What a worker returns for one chunk. The arrays cover the documents that passed the
    per-document filters; duplicates are decided in the main process, which sees every document."""

    documents: int
    encoder: str  # "gigatoken", "piece-cache" or "encode_batch" (megatron_tibetan.tokenizer.encoders)
    raw_bytes: int
    dropped: dict[str, int]
    invalid_utf8: list[str]
    digests: np.ndarray  # per kept document
    syllables: np.ndarray
    text_bytes: np.ndarray
    lengths: list[np.ndarray]  # per key, per kept document (eod included)
    tokens: list[np.ndarray]  # per key, all kept documents concatenated
    cpu_seconds: float  # the worker's, since its previous chunk (or since it was ready)


_WORKER: dict = {}


def _init_worker(spec: _WorkerSpec) -> None:
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one core per worker
    from tokenizers import Tokenizer

    _WORKER["encoder"] = encoder_for(Tokenizer.from_str(spec.tokenizer_json), spec.encoder)
    _WORKER["spec"] = spec
    _WORKER["cpu_mark"] = time.process_time()  # start-up ends here


def _encode_chunk(chunk: LineBlock | list[RawDocument], dtype: str) -> _Chunk:
    spec: _WorkerSpec = _WORKER["spec"]
    decoded = _decode(chunk, spec.json_keys)
    columns = [normalize_texts(c, spec.keep_layout) for c in decoded.columns] if spec.normalize else decoded.columns
    counts = [TextCounts.of(c, tibetan=spec.filters.min_tibetan_ratio > 0) for c in columns]
    reasons = drop_reasons(counts, spec.filters)
    keep = reasons == 0
    dropped = {r: int(n) for r, n in zip(FILTER_REASONS, np.bincount(reasons, minlength=len(FILTER_REASONS))) if r and n}
    if decoded.invalid:
        dropped["invalid_utf8"] = len(decoded.invalid)
    if not keep.all():
        columns = [list(itertools.compress(c, keep)) for c in columns]
    digests = np.zeros(len(columns[0]), dtype=np.uint64)
    if spec.filters.dedup:
        digests[:] = list(map(text_digest, zip(*columns)))
    lengths, tokens = [], []
    for column in columns:
        key_lengths, key_tokens = _tokenize(column, spec.eod_id, dtype)
        lengths.append(key_lengths)
        tokens.append(key_tokens)
    cpu_mark, _WORKER["cpu_mark"] = _WORKER["cpu_mark"], time.process_time()
    return _Chunk(
        documents=decoded.documents,
        encoder=_WORKER["encoder"].name,
        raw_bytes=decoded.raw_bytes,
        dropped=dropped,
        invalid_utf8=decoded.invalid,
        digests=digests,
        syllables=sum(c.syllables[keep] for c in counts),
        text_bytes=sum(c.utf8_bytes[keep] for c in counts),
        lengths=lengths,
        tokens=tokens,
        cpu_seconds=_WORKER["cpu_mark"] - cpu_mark,
    )


def _tokenize(texts: list[str], eod_id: int | None, dtype: str) -> tuple[np.ndarray, np.ndarray]:
    """Token counts and the concatenated tokens of ``texts`` (special tokens as the tokenizer adds them,
    like ``tokenizer(text).input_ids``; then eod)."""
    lengths, tokens = _WORKER["encoder"].encode(texts)
    tokens = tokens.astype(dtype)
    if eod_id is not None:
        tokens = np.insert(tokens, np.cumsum(lengths), eod_id)
        lengths = lengths + 1
    return lengths, tokens


class _Decoded(NamedTuple):
    documents: int
    raw_bytes: int  # the documents' bytes, line terminators excluded
    columns: list[list[str]]  # per JSON key (one for text files): the texts of the valid UTF-8 documents
    invalid: list[str]  # file:line of the documents that are not UTF-8


_JSON = json.JSONDecoder()


def _decode(chunk: LineBlock | list[RawDocument], keys: tuple[str, ...]) -> _Decoded:
    """The texts of a chunk. A block of lines is decoded, split and parsed at once; a block with anything
    unusual (invalid UTF-8, a blank, malformed or non-object JSON line, a missing or non-string key, JSON
    with surrounding spaces) and paragraph documents go document by document through
    :func:`megatron_tibetan.text.readers.decode_document`, which reports each problem with file and line."""
    if isinstance(chunk, LineBlock):
        decoded = _decode_block(chunk, keys)
        if decoded is not None:
            return decoded
        chunk = chunk.documents()
    columns: list[list[str]] = [[] for _ in keys]
    invalid = []
    for doc in chunk:
        try:
            texts = decode_document(doc, keys)
        except UnicodeDecodeError:
            invalid.append(f"{doc.source}:{doc.line}")
            continue
        for column, text in zip(columns, texts):
            column.append(text)
    return _Decoded(len(chunk), sum(len(doc.data) for doc in chunk), columns, invalid)


def _decode_block(block: LineBlock, keys: tuple[str, ...]) -> _Decoded | None:
    try:
        text = block.data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    lines = text.split("\n")  # as the binary readers: only LF ends a line
    if text.endswith("\n"):
        lines.pop()
    raw_bytes = len(block.data) - block.data.count(b"\n")
    if "\r" in text:
        stripped = [line.rstrip("\r") for line in lines]
        raw_bytes -= sum(map(len, lines)) - sum(map(len, stripped))
        lines = stripped
    if not block.is_json:
        return _Decoded(len(lines), raw_bytes, [lines], [])
    try:
        parsed = list(map(_JSON.raw_decode, lines))
    except ValueError:  # a malformed or blank line, or spaces before the JSON
        return None
    if [end for _, end in parsed] != list(map(len, lines)):  # something after the JSON value
        return None
    records = [record for record, _ in parsed]
    if set(map(type, records)) != {dict}:
        return None
    columns = []
    for key in keys:
        try:
            values = list(map(operator.itemgetter(key), records))
        except KeyError:
            return None
        if set(map(type, values)) != {str}:
            return None
        columns.append(values)
    return _Decoded(len(lines), raw_bytes, columns, [])


def _sample_texts(chunk: LineBlock | list[RawDocument], config: PreprocessConfig, limit: int = 200) -> list[str]:
    """Texts of the first documents, as the workers will tokenise them, for the encoder's start-up check."""
    texts = []
    for doc in (chunk.documents() if isinstance(chunk, LineBlock) else chunk)[:limit]:
        try:
            decoded = decode_document(doc, config.json_keys)
        except (UnicodeDecodeError, InputError):  # reported by the workers with file:line
            continue
        texts += [normalize_document(t, config.keep_layout) if config.normalize else t for t in decoded]
    return texts


def _read_chunks(paths: list[Path], config: PreprocessConfig) -> Iterator[LineBlock | list[RawDocument]]:
    """The input in chunks of about ``chunk_bytes``: blocks of whole lines, or lists of paragraph documents;
    ``config.limit`` documents at most."""
    left = config.limit if config.limit is not None else float("inf")
    for path in paths:
        if config.paragraphs and not is_jsonl(path):
            chunks = _chunks(read_documents(path, paragraphs=True), config.chunk_bytes)
        else:
            chunks = read_line_blocks(path, config.chunk_bytes)
        for chunk in chunks:
            if left <= 0:
                return
            n = len(chunk) if isinstance(chunk, list) else chunk.data.count(b"\n") + (not chunk.data.endswith(b"\n"))
            if n > left:
                chunk = chunk[: int(left)] if isinstance(chunk, list) else _first_lines(chunk, int(left))
            left -= n
            yield chunk


def _first_lines(block: LineBlock, n: int) -> LineBlock:
    end = -1
    for _ in range(n):
        end = block.data.find(b"\n", end + 1)
        if end < 0:
            return block
    return block._replace(data=block.data[: end + 1])


def _chunks(docs: Iterable[RawDocument], chunk_bytes: int) -> Iterator[list[RawDocument]]:
    chunk, size = [], 0
    for doc in docs:
        chunk.append(doc)
        size += len(doc.data)
        if size >= chunk_bytes:
            yield chunk
            chunk, size = [], 0
    if chunk:
        yield chunk


class _Totals:
    """Running counts; becomes the body of ``<prefix>_stats.json``."""

    def __init__(self, keys: tuple[str, ...]):
        self.documents_in = self.documents_out = self.bytes_in = self.bytes_out = self.syllables = 0
        self.dropped = dict.fromkeys(DROP_REASONS, 0)
        self.invalid_utf8: list[str] = []
        self.tokens = dict.fromkeys(keys, 0)
        self.encoder = None
        self.encoder_reason = None
        self.cpu_seconds = 0.0  # processing only (see preprocess)


def _write_chunk(chunk: _Chunk, writers: dict, dedup: DuplicateFilter | None, totals: _Totals) -> None:
    keep = np.ones(len(chunk.digests), dtype=bool)
    if dedup is not None:
        keep = np.array([not dedup.seen(d) for d in chunk.digests.tolist()], dtype=bool)
    totals.documents_in += chunk.documents
    totals.encoder = chunk.encoder
    totals.bytes_in += chunk.raw_bytes
    for reason, n in chunk.dropped.items():
        totals.dropped[reason] += n
    totals.dropped["duplicate"] += int((~keep).sum())
    room = MAX_INVALID_REPORTED - len(totals.invalid_utf8)
    totals.invalid_utf8.extend(chunk.invalid_utf8[: max(room, 0)])
    totals.documents_out += int(keep.sum())
    totals.syllables += int(chunk.syllables[keep].sum())
    totals.bytes_out += int(chunk.text_bytes[keep].sum())
    totals.cpu_seconds += chunk.cpu_seconds
    everything = bool(keep.all())
    for (key, writer), lengths, tokens in zip(writers.items(), chunk.lengths, chunk.tokens):
        if everything:
            writer.add_many(tokens, lengths)
        else:
            writer.add_many(tokens[np.repeat(keep, lengths)], lengths[keep])
        totals.tokens[key] += int(lengths[keep].sum())


def _check_inputs(config: PreprocessConfig) -> list:
    paths = expand_inputs(config.inputs)
    text_files = [p for p in paths if not is_jsonl(p)]
    if text_files and len(config.json_keys) != 1:
        raise InputError(f"{text_files[0]}: a text file has one document text; --json-keys must name one key")
    if config.workers < 1:
        raise ValueError(f"--workers must be at least 1, got {config.workers}")
    return paths


def preprocess(config: PreprocessConfig, tokenizer=None) -> dict:
    """Tokenise ``config.inputs`` into ``<output_prefix>_<key>_document.bin/.idx`` (one per JSON key) and
    ``<output_prefix>_stats.json``; returns the stats. ``tokenizer``: an already loaded
    ``load_tokenizer(config.tokenizer)``, to skip loading it again. Bad input raises :class:`InputError`
    (or ``FileNotFoundError``) naming the file, line or key; no partial dataset is left behind."""
    from tqdm import tqdm

    from megatron_tibetan.tokenizer.base import load_tokenizer

    start = time.perf_counter()
    paths = _check_inputs(config)
    tokenizer = load_tokenizer(config.tokenizer) if tokenizer is None else tokenizer
    eod_id = tokenizer.eos_token_id if config.append_eod else None
    if config.append_eod and eod_id is None:
        raise ValueError(f"tokenizer '{config.tokenizer}' has no eos token to append as eod")
    dedup = DuplicateFilter(config.filters.dedup_memory_mb) if config.filters.dedup else None
    totals = _Totals(config.json_keys)
    chunks = _read_chunks(paths, config)
    first = next(chunks, None)
    chunks = itertools.chain([first] if first else [], chunks)
    encoder = encoder_for(tokenizer.backend_tokenizer, sample=_sample_texts(first or [], config))
    totals.encoder_reason = encoder.reason
    spec = _WorkerSpec(tokenizer.backend_tokenizer.to_str(), config.json_keys, config.normalize, config.keep_layout,
                       config.filters,
                       eod_id, encoder.name)
    del encoder  # the workers build their own; this copy would only be carried into every fork
    prefixes = {key: dataset_prefix(config.output_prefix, key) for key in config.json_keys}
    progress = tqdm(desc="preprocess", unit="B", unit_scale=True, unit_divisor=1000, mininterval=1.0,
                    disable=not config.progress, file=sys.stderr)
    with _start_pool(config.workers, spec) as pool, \
            contextlib.ExitStack() as stack:
        dtype = token_dtype(len(tokenizer))
        writers = {key: stack.enter_context(DocumentWriter(prefix, dtype)) for key, prefix in prefixes.items()}
        # processing time: start-up (imports, tokenizer, encoder check, workers' encoders) excluded
        processing_start, main_cpu_start = time.perf_counter(), time.process_time()
        pending: deque = deque()
        for chunk in itertools.chain(chunks, [None] * (2 * config.workers + 2)):  # the Nones drain the queue
            if chunk is not None:
                pending.append(pool.apply_async(_encode_chunk, (chunk, np.dtype(dtype).name)))
            if pending and (chunk is None or len(pending) > 2 * config.workers + 1):
                _write_chunk(pending.popleft().get(), writers, dedup, totals)
                progress.update(totals.bytes_in - progress.n)
                progress.set_postfix(docs_s=f"{totals.documents_in / (time.perf_counter() - start):.0f}")
        _check_totals(totals, paths)
        totals.cpu_seconds += time.process_time() - main_cpu_start
        processing_seconds = time.perf_counter() - processing_start
    progress.close()
    stats = _stats(config, totals, tokenizer, dtype, eod_id, dedup, prefixes, time.perf_counter() - start)
    stats.update(processing_seconds=round(processing_seconds, 3), processing_cpu_seconds=round(totals.cpu_seconds, 3))
    with open(config.output_prefix + "_stats.json", "w") as f:
        json.dump(stats, f, indent=2, ensure_ascii=False)
    return stats


def _start_pool(workers: int, spec: _WorkerSpec):
    """fork on Linux (as Megatron-LM's tool; spawn cannot start workers for a script read from stdin),
    spawn elsewhere. Workers use only the tokenizer they build from JSON, never inherited state."""
    context = multiprocessing.get_context("fork" if sys.platform == "linux" else "spawn")
    before = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # set while forking, else tokenizers warns in each child
    try:
        return context.Pool(workers, _init_worker, (spec,))
    finally:
        if before is None:
            del os.environ["TOKENIZERS_PARALLELISM"]
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = before


def _check_totals(totals: _Totals, paths: list) -> None:
    """Raise (so no dataset is written) when there was nothing to read or nothing survived."""
    names = ", ".join(map(str, paths))
    if totals.documents_in == 0:
        raise InputError(f"empty input: no documents in {names}")
    if totals.documents_out == 0:
        drops = ", ".join(f"{r}={n}" for r, n in totals.dropped.items() if n)
        raise InputError(f"all {totals.documents_in} documents of {names} were dropped ({drops})")
    assert totals.documents_in == totals.documents_out + sum(totals.dropped.values()), "document counts do not balance"


def _stats(config, totals: _Totals, tokenizer, dtype, eod_id, dedup, prefixes, seconds: float) -> dict:
    tokens = sum(totals.tokens.values())
    eods = totals.documents_out * len(prefixes) if eod_id is not None else 0
    return {
        "inputs": list(config.inputs),
        "datasets": prefixes,
        "tokenizer": str(config.tokenizer),
        "vocab_size": len(tokenizer),
        "dtype": np.dtype(dtype).name,
        "append_eod": config.append_eod,
        "eod_id": eod_id,
        "normalize": config.normalize,
        "keep_layout": config.keep_layout,
        "paragraphs": config.paragraphs,
        "filters": asdict(config.filters),
        "limit": config.limit,
        "workers": config.workers,
        "encoder": totals.encoder,
        "encoder_reason": totals.encoder_reason,
        "documents_in": totals.documents_in,
        "documents_out": totals.documents_out,
        "dropped": totals.dropped,
        "invalid_utf8_lines": totals.invalid_utf8,
        "tokens": tokens,
        "tokens_per_key": totals.tokens,
        "bytes_in": totals.bytes_in,
        "bytes_out": totals.bytes_out,
        "syllables": totals.syllables,
        "tokens_per_syllable": (tokens - eods) / totals.syllables if totals.syllables else None,
        "dedup_entries": dedup.entries if dedup else None,
        "dedup_not_remembered": dedup.not_remembered if dedup else None,
        "seconds": round(seconds, 3),
        "docs_per_s": round(totals.documents_in / seconds, 1),
        "mb_per_s": round(totals.bytes_in / 1e6 / seconds, 3),
    }
