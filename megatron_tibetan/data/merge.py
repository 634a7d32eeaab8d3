"""Merge preprocessed shards (``tools/preprocess_data.py`` run once per input file, e.g. as a Slurm job
array) into one indexed dataset and one ``_stats.json``, equal to a single run over the same inputs.

Shards are concatenated in the order given with megatron-core's ``IndexedDatasetBuilder.add_index``.
Each shard removed the duplicates inside itself; a single run also removes a document that repeats one
of an *earlier shard*. With ``dedup`` (the default when the shards deduplicated) the merge removes those
too: it digests each document's tokens (all JSON keys together) into a :class:`DuplicateFilter` of the
shards' ``dedup_memory_mb``. Equal texts tokenise to equal ids and byte-level BPE decodes back to the
text, so "same tokens" is "same text". A shard without such repeats is still copied whole with
``add_index``; one with repeats is copied document by document. Syllables and bytes of a removed
repeat are counted from its decoded tokens (exact for byte-level BPE tokenizers, which decode losslessly).

The stats are summed (documents in/out, drops by reason, tokens, bytes, syllables, seconds of the shard
tasks); settings that must agree (tokenizer, vocabulary, dtype, eod, normalisation, filters, JSON keys)
are checked, naming the shard that differs.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import numpy as np

from megatron_tibetan.data.indexed import DatasetFileError, check_dataset, dataset_prefix
from megatron_tibetan.text.filters import DROP_REASONS, DuplicateFilter

STATS_SUFFIX = "_stats.json"
MAX_INVALID_REPORTED = 100
# settings every shard must share for the merged dataset to be one dataset
AGREE = ("tokenizer", "vocab_size", "dtype", "append_eod", "eod_id", "normalize", "keep_layout", "paragraphs",
         "filters")


class MergeError(ValueError):
    """Shards that cannot be merged; the message names the shard and the setting."""


def shard_prefixes(inputs: list[str]) -> list[str]:
    """Shard output prefixes from ``inputs``: a prefix (``<prefix>_stats.json`` exists) or a directory (all its
    ``*_stats.json``, sorted by name, so zero-padded shard numbers keep the input order)."""
    prefixes = []
    for item in inputs:
        if os.path.isdir(item):
            found = sorted(str(p)[: -len(STATS_SUFFIX)] for p in Path(item).glob(f"*{STATS_SUFFIX}"))
            if not found:
                raise MergeError(f"{item}: no *{STATS_SUFFIX} in this directory (is it the preprocessing output?)")
            prefixes.extend(found)
        elif os.path.isfile(item + STATS_SUFFIX):
            prefixes.append(item)
        else:
            raise MergeError(f"{item}: neither a directory nor a shard prefix ({item}{STATS_SUFFIX} not found)")
    if len(set(map(os.path.abspath, prefixes))) != len(prefixes):
        raise MergeError("a shard is given twice")
    return prefixes


def _load_stats(prefixes: list[str]) -> list[dict]:
    shards = []
    for prefix in prefixes:
        path = prefix + STATS_SUFFIX
        try:
            stats = json.loads(Path(path).read_text())
        except json.JSONDecodeError as e:
            raise MergeError(f"{path}: not valid JSON ({e})") from e
        for key in AGREE + ("datasets", "documents_in", "documents_out", "dropped", "tokens_per_key"):
            if key not in stats:
                raise MergeError(f"{path}: no '{key}' (not written by tools/preprocess_data.py?)")
        first = shards[0] if shards else stats
        for key in AGREE:
            if stats[key] != first[key]:
                raise MergeError(f"{path}: {key} is {stats[key]!r} but {prefixes[0]}{STATS_SUFFIX} has {first[key]!r}")
        if list(stats["datasets"]) != list(first["datasets"]):
            raise MergeError(f"{path}: JSON keys {list(stats['datasets'])} differ from {list(first['datasets'])}")
        shards.append(stats)
    return shards


def _digest(docs: list[np.ndarray]) -> int:
    """64-bit digest of one document's token arrays (one per JSON key); never 0 (a free slot)."""
    h = hashlib.blake2b(digest_size=8)
    for tokens in docs:
        h.update(np.ascontiguousarray(tokens).tobytes())
        h.update(b"\xff\xfe")  # key separator: no token array ends in a way that forges it with the next
    return int.from_bytes(h.digest(), "little") or 1


class _Shard:
    """One shard's datasets (one per JSON key), read through megatron-core's IndexedDataset."""

    def __init__(self, prefix: str, keys: list[str], dtype: np.dtype):
        from megatron.core.datasets.indexed_dataset import IndexedDataset

        self.prefix = prefix
        self.paths = [dataset_prefix(prefix, key) for key in keys]
        for path in self.paths:
            missing = [path + s for s in (".bin", ".idx") if not os.path.isfile(path + s)]
            if missing:
                raise MergeError(f"shard {prefix}: missing {', '.join(missing)}")
        for path in self.paths:
            try:
                check_dataset(path)
            except DatasetFileError as error:
                raise MergeError(f"shard {prefix}: {error}") from None
        self.datasets = [IndexedDataset(p, mmap=True) for p in self.paths]
        for path, ds in zip(self.paths, self.datasets):
            if np.dtype(ds.index.dtype) != dtype:
                raise MergeError(f"{path}.idx holds {np.dtype(ds.index.dtype).name} tokens, its stats say {dtype.name}")
        counts = {len(ds.document_indices) - 1 for ds in self.datasets}
        if len(counts) != 1:
            raise MergeError(f"shard {prefix}: its JSON keys' datasets hold different numbers of documents")
        self.documents = counts.pop()

    def document(self, k: int, i: int) -> tuple[np.ndarray, list[int]]:
        """Document ``i`` of key ``k``: its tokens and its sequence lengths."""
        ds = self.datasets[k]
        start, end = ds.document_indices[i], ds.document_indices[i + 1]
        seqs = [ds[j] for j in range(start, end)]
        return (np.concatenate(seqs) if seqs else np.zeros(0, ds.index.dtype)), [len(s) for s in seqs]


def merge_datasets(inputs: list[str], output_prefix: str, dedup: bool | None = None, progress: bool = True) -> dict:
    """Merge the shards named by ``inputs`` (see :func:`shard_prefixes`) into
    ``<output_prefix>_<key>_document.bin/.idx`` and ``<output_prefix>_stats.json``; returns the stats.
    ``dedup`` None follows the shards' own setting. No partial output is left on failure."""
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder
    from tqdm import tqdm

    start = time.perf_counter()
    prefixes = shard_prefixes(inputs)
    shards = _load_stats(prefixes)
    first = shards[0]
    keys = list(first["datasets"])
    dtype = np.dtype(first["dtype"])
    dedup = first["filters"]["dedup"] if dedup is None else dedup
    table = DuplicateFilter(first["filters"]["dedup_memory_mb"]) if dedup else None
    outputs = [dataset_prefix(output_prefix, key) for key in keys]
    if os.path.abspath(output_prefix) in map(os.path.abspath, prefixes):
        raise MergeError(f"--output-prefix {output_prefix} is one of the shards")
    os.makedirs(os.path.dirname(os.path.abspath(output_prefix)), exist_ok=True)
    builders = [IndexedDatasetBuilder(out + ".partial.bin", dtype=dtype.type) for out in outputs]
    removed = {"documents": 0, "tokens": dict.fromkeys(keys, 0), "syllables": 0, "bytes": 0}
    decoder = None
    try:
        bar = tqdm(total=sum(s["documents_out"] for s in shards), desc="merge", unit="doc", disable=not progress)
        for prefix, stats in zip(prefixes, shards):
            shard = _Shard(prefix, keys, dtype)
            if shard.documents != stats["documents_out"]:
                raise MergeError(f"shard {prefix}: {shard.documents} documents on disk, its stats say {stats['documents_out']}")
            repeats = []
            if table is not None:
                repeats = [i for i in range(shard.documents)
                           if table.seen(_digest([shard.document(k, i)[0] for k in range(len(keys))]))]
            if not repeats:
                for builder, path in zip(builders, shard.paths):
                    builder.add_index(path)
            else:
                decoder = decoder or _Decoder(first)
                skip = set(repeats)
                for i in range(shard.documents):
                    for k, builder in enumerate(builders):
                        tokens, lengths = shard.document(k, i)
                        if i in skip:
                            removed["tokens"][keys[k]] += len(tokens)
                            syllables, nbytes = decoder.measure(tokens)
                            removed["syllables"] += syllables
                            removed["bytes"] += nbytes
                        else:
                            builder.add_document(tokens, lengths)
                removed["documents"] += len(repeats)
            bar.update(shard.documents)
        bar.close()
        for builder, out in zip(builders, outputs):
            builder.finalize(out + ".partial.idx")
        for out in outputs:
            for suffix in (".bin", ".idx"):
                os.replace(out + ".partial" + suffix, out + suffix)
    except BaseException:
        for builder, out in zip(builders, outputs):
            builder.data_file.close()
            for suffix in (".bin", ".idx"):
                if os.path.exists(out + ".partial" + suffix):
                    os.remove(out + ".partial" + suffix)
        raise
    stats = _merged_stats(prefixes, shards, outputs, keys, removed, table, time.perf_counter() - start)
    with open(output_prefix + STATS_SUFFIX, "w") as f:
        json.dump(stats, f, indent=2, ensure_ascii=False)
    return stats


class _Decoder:
    """Syllables and UTF-8 bytes of a removed document, from its decoded tokens (eod and any special
    token the tokenizer added are left out, as the preprocessing counted the text alone)."""

    def __init__(self, stats: dict):
        from megatron_tibetan.tokenizer.base import load_tokenizer

        self.tokenizer = load_tokenizer(stats["tokenizer"])
        self.eod = stats["eod_id"]

    def measure(self, tokens: np.ndarray) -> tuple[int, int]:
        from megatron_tibetan.text.segment import count_syllables

        ids = tokens.tolist()
        if self.eod is not None and ids and ids[-1] == self.eod:
            ids = ids[:-1]
        text = self.tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
        return count_syllables(text), len(text.encode("utf-8"))


def _same_or_list(values: list):
    return values[0] if all(v == values[0] for v in values) else values


def _merged_stats(prefixes, shards, outputs, keys, removed, table, seconds) -> dict:
    first = shards[0]
    total = lambda key: sum(s[key] for s in shards)  # noqa: E731
    dropped = {r: sum(s["dropped"].get(r, 0) for s in shards) for r in DROP_REASONS}
    dropped["duplicate"] += removed["documents"]
    tokens_per_key = {k: sum(s["tokens_per_key"][k] for s in shards) - removed["tokens"][k] for k in keys}
    tokens = sum(tokens_per_key.values())
    documents_out = total("documents_out") - removed["documents"]
    syllables = total("syllables") - removed["syllables"]
    eods = documents_out * len(keys) if first["eod_id"] is not None else 0
    invalid = [loc for s in shards for loc in s.get("invalid_utf8_lines", [])][:MAX_INVALID_REPORTED]
    shard_seconds = total("seconds")
    stats = {
        "inputs": [i for s in shards for i in s.get("inputs", [])],
        "datasets": dict(zip(keys, outputs)),
        **{key: first[key] for key in AGREE},
        "shards": prefixes,
        "limit": _same_or_list([s.get("limit") for s in shards]),
        "workers": _same_or_list([s.get("workers") for s in shards]),
        "encoder": first.get("encoder"),
        "documents_in": total("documents_in"),
        "documents_out": documents_out,
        "dropped": dropped,
        "cross_shard_duplicates": removed["documents"],
        "invalid_utf8_lines": invalid,
        "tokens": tokens,
        "tokens_per_key": tokens_per_key,
        "bytes_in": total("bytes_in"),
        "bytes_out": total("bytes_out") - removed["bytes"],
        "syllables": syllables,
        "tokens_per_syllable": (tokens - eods) / syllables if syllables else None,
        "dedup_entries": table.entries if table is not None else None,
        "dedup_not_remembered": (table.not_remembered + sum(s.get("dedup_not_remembered") or 0 for s in shards)
                                 if table is not None else None),
        # throughput per shard task: summed over the shards, as if one task had done all of them
        "seconds": round(shard_seconds, 3),
        "docs_per_s": round(total("documents_in") / shard_seconds, 1) if shard_seconds else None,
        "mb_per_s": round(total("bytes_in") / 1e6 / shard_seconds, 3) if shard_seconds else None,
        "merge_seconds": round(seconds, 3),
    }
    if documents_out + sum(dropped.values()) != stats["documents_in"]:
        raise MergeError("document counts do not balance (a shard's stats do not match its dataset?)")
    return stats
