"""Preparing SFT data: parallel files and chat JSONL -> templated, tokenised, loss-masked examples.

Stages (a line of progress each): read and normalise the inputs, phrase translation pairs
(:mod:`~megatron_tibetan.data.sft_examples`); drop empty records and duplicates; drop examples whose
Tibetan is in an ``exclude`` file (evaluation references); hold out whole groups as the validation
split and check that no training example shares Tibetan with it; render each conversation with the
model's chat template and locate the trained tokens (:mod:`~megatron_tibetan.data.chat`); drop
examples longer than ``max_length`` positions; write.

Outputs, for ``split`` in train and valid (valid only when it holds examples; stale valid files of an
earlier run are removed):

- ``<prefix>_<split>_tokens.bin/.idx`` and ``<prefix>_<split>_loss_mask.bin/.idx``: megatron-core
  indexed datasets (``IndexedDatasetBuilder``), one sequence per example in the same order; read by
  :class:`~megatron_tibetan.data.sft_dataset.SFTDataset` (format in its docstring);
- ``<prefix>_<split>.jsonl``: per example its messages, the rendered text, direction, origin
  (file:line), phrasing index, token and trained-token counts, for inspection;
- ``<prefix>_stats.json``: examples in and out, dropped by reason (``in = train + valid + dropped``),
  per direction, leaks (with the first origins), the examples and chat messages a normalisation rule
  changed (``normalized``, ``normalized_messages``), tokens, packing efficiency at ``seq_length``, the
  settings, tokenizer, vocabulary size, eod id (the pad id) and seconds.

An example's length is its positions, ``tokens - 1`` (inputs ``ids[:-1]`` predict ``ids[1:]``), so
``max_length`` equal to the training ``seq_length`` makes every kept example fit one sequence.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from megatron_tibetan.data.chat import ChatEncoder, ChatTemplateError, SpecialTokenError, load_chat_template
from megatron_tibetan.data.indexed import DocumentWriter, token_dtype
from megatron_tibetan.data.prompts import LANGUAGES
from megatron_tibetan.data.sft_dataset import LOSS_MASK, SPLITS, TOKENS, split_prefix
from megatron_tibetan.data.sft_examples import (
    DROP_REASONS, Counts, Example, deduplicate, drop_leaks, message_examples, pair_examples, read_exclude, split,
)
from megatron_tibetan.data.sft_pack import first_fit_decreasing, packing_efficiency
from megatron_tibetan.text.readers import InputError, expand_inputs
from megatron_tibetan.tokenizer.base import load_tokenizer

ENCODE_CHUNK = 1024  # conversations tokenised per batch


@dataclass(frozen=True)
class SFTDataConfig:
    output_prefix: str
    tokenizer: str
    pairs: tuple[tuple[str, str, str], ...] = ()  # (language, source file, Tibetan file)
    messages: tuple[str, ...] = ()  # chat JSONL files
    exclude: tuple[str, ...] = ()  # Tibetan lines that must not be trained on (evaluation references)
    valid_fraction: float = 0.0
    max_length: int = 2048  # positions (tokens - 1) an example may take
    reverse_share: float = 0.0  # share of pairs also given as bo→source
    seed: int = 1234
    template: str = "auto"  # auto | model | plain
    chat_template: str | None = None  # a Jinja chat template file used instead (overrides template)
    train_on: str = "all"  # all | last assistant turn(s)
    normalize_messages: bool = True
    keep_layout: bool = True  # messages keep newlines, blank lines, indentation and spaces as written
    seq_length: int | None = None  # packing efficiency reported at this length (default: max_length)
    progress: bool = True


def parse_pair_spec(spec: str) -> tuple[str, str, str]:
    """``"zh=SRC,BO"`` -> ``("zh", "SRC", "BO")``."""
    lang, sep, files = spec.partition("=")
    parts = files.split(",")
    if not sep or len(parts) != 2 or not all(parts):
        raise ValueError(f"--pairs {spec!r}: expected LANG=SOURCE_FILE,TIBETAN_FILE (e.g. zh=ntrex128.zh.xz,ntrex128.bo.xz)")
    return lang, parts[0], parts[1]


def _check(config: SFTDataConfig) -> None:
    if not config.pairs and not config.messages:
        raise ValueError("no input: give --pairs and/or --messages")
    for lang, source, tibetan in config.pairs:
        if lang not in LANGUAGES or lang == "bo":
            raise ValueError(f"--pairs {lang}=...: the source language must be one of "
                             f"{', '.join(k for k in LANGUAGES if k != 'bo')}")
        expand_inputs([source, tibetan])
    others = [*config.messages, *config.exclude, *([config.chat_template] if config.chat_template else [])]
    if others:
        expand_inputs(others)
    if not 0 <= config.reverse_share <= 1:
        raise ValueError(f"reverse share {config.reverse_share} must be in [0, 1]")
    if not 0 <= config.valid_fraction < 1:
        raise ValueError(f"valid fraction {config.valid_fraction} must be in [0, 1)")
    if config.max_length < 1 or (config.seq_length is not None and config.seq_length < 1):
        raise ValueError("max length and sequence length must be positive")


def _log(config: SFTDataConfig, message: str) -> None:
    if config.progress:
        print(f"[prepare_sft] {message}", flush=True)


def encode(examples: list[Example], encoder: ChatEncoder, counts: Counts, max_length: int,
           progress: bool = True, desc: str = "encode") -> list[tuple[Example, object]]:
    """(example, :class:`~megatron_tibetan.data.chat.Encoded`) for the examples that fit ``max_length``
    positions; special-token and over-long examples are counted, template errors raised with file:line."""
    kept = []
    with tqdm(total=len(examples), desc=desc, unit="ex", disable=not progress) as bar:
        for start in range(0, len(examples), ENCODE_CHUNK):
            chunk = examples[start : start + ENCODE_CHUNK]
            for ex, result in zip(chunk, encoder.encode_many([ex.messages for ex in chunk])):
                if isinstance(result, SpecialTokenError):
                    counts.drop(ex.direction, "special_token")
                elif isinstance(result, ChatTemplateError):
                    raise InputError(f"{ex.origin}: {result}")
                elif len(result.ids) - 1 > max_length:
                    counts.drop(ex.direction, "too_long")
                else:
                    kept.append((ex, result))
            bar.update(len(chunk))
    return kept


def _outputs(prefix: str, split_name: str) -> list[str]:
    return [f"{prefix}_{split_name}.jsonl"] + [
        split_prefix(prefix, split_name, kind) + ext for kind in (TOKENS, LOSS_MASK) for ext in (".bin", ".idx")
    ]


def write_split(prefix: str, split_name: str, items: list, dtype) -> None:
    """The indexed datasets and the inspection JSONL of one split (each complete or absent)."""
    jsonl = f"{prefix}_{split_name}.jsonl"
    with DocumentWriter(split_prefix(prefix, split_name, TOKENS), dtype) as tokens, \
            DocumentWriter(split_prefix(prefix, split_name, LOSS_MASK), np.uint8) as masks, \
            open(jsonl + ".partial", "w", encoding="utf-8") as out:
        for ex, enc in items:
            tokens.add(enc.ids.astype(dtype))
            masks.add(enc.target.astype(np.uint8))
            record = {"direction": ex.direction, "origin": ex.origin, "phrasing": ex.phrasing,
                      "tokens": int(len(enc.ids)), "trained_tokens": int(enc.target.sum()),
                      "messages": ex.messages, "text": enc.text}
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
    os.replace(jsonl + ".partial", jsonl)


def _token_stats(items: list, seq_length: int) -> dict:
    positions = [len(enc.ids) - 1 for _, enc in items]
    bins = first_fit_decreasing(positions, seq_length) if items else []
    return {
        "examples": len(items),
        "tokens": int(sum(len(enc.ids) for _, enc in items)),
        "positions": int(sum(positions)),
        "trained_tokens": int(sum(int(enc.target.sum()) for _, enc in items)),
        "max_positions": int(max(positions, default=0)),
        "mean_positions": round(float(np.mean(positions)), 2) if items else 0.0,
        "packs": len(bins),
        "packing_efficiency": round(packing_efficiency(positions, bins, seq_length), 4),
    }


def prepare_sft(config: SFTDataConfig, tokenizer=None) -> dict:
    """Write the SFT data of ``config`` (see the module docstring); returns the stats. ``tokenizer``:
    the already loaded ``config.tokenizer``, if at hand."""
    started = time.time()
    _check(config)
    chat_template = load_chat_template(config.chat_template) if config.chat_template else None  # before any work
    counts = Counts()

    examples: list[Example] = []
    for lang, source, tibetan in config.pairs:
        before = len(examples)
        examples += pair_examples(lang, source, tibetan, counts, config.seed, config.reverse_share)
        _log(config, f"{lang}→bo pairs {source} + {tibetan}: {len(examples) - before} examples")
    for path in config.messages:
        before = len(examples)
        examples += message_examples(path, counts, config.normalize_messages, config.keep_layout)
        _log(config, f"messages {path}: {len(examples) - before} conversations")
    examples = deduplicate(examples, counts)
    banned, exclude_lines = read_exclude(config.exclude)
    examples = drop_leaks(examples, banned, "leak_exclude", counts)
    train, valid = split(examples, config.valid_fraction, config.seed)
    held_out = {segment for ex in valid for segment in ex.tibetan}
    train = drop_leaks(train, held_out, "leak_valid", counts)

    tokenizer = tokenizer or load_tokenizer(config.tokenizer)
    if tokenizer.eos_token_id is None:
        raise ValueError(f"tokenizer {config.tokenizer!r} has no eos token (the id padding uses)")
    encoder = ChatEncoder(tokenizer, config.template, config.train_on, chat_template)
    _log(config, f"{len(train)} training and {len(valid)} held-out examples before templating "
                 f"(template {encoder.template}, train on {config.train_on} assistant turn(s))")

    items = {"train": encode(train, encoder, counts, config.max_length, config.progress, "train"),
             "valid": encode(valid, encoder, counts, config.max_length, config.progress, "valid")}
    if not items["train"]:
        dropped = {r: sum(d.get(r, 0) for d in counts.dropped.values()) for r in DROP_REASONS}
        raise InputError(f"no training examples left (dropped: {', '.join(f'{r} {n}' for r, n in dropped.items() if n) or 'none'})")

    # everything is written into a hidden staging folder and moved beside the prefix at the end, so a killed
    # run never leaves a dataset under its final name
    prefix = config.output_prefix
    parent = Path(prefix).parent
    staging = parent / f".{Path(prefix).name}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    staged = str(staging / Path(prefix).name)
    dtype = token_dtype(len(tokenizer))
    for name in SPLITS:
        if items[name]:
            write_split(staged, name, items[name], dtype)
    stats = _stats(config, counts, items, tokenizer, encoder, dtype, exclude_lines)
    stats["seconds"] = round(time.time() - started, 2)
    Path(f"{staged}_stats.json").write_text(json.dumps(stats, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    for name in SPLITS:
        if not items[name]:
            for stale in _outputs(prefix, name):
                Path(stale).unlink(missing_ok=True)
    for path in sorted(staging.iterdir(), key=lambda p: p.name.endswith("_stats.json")):  # the stats last
        os.replace(path, parent / path.name)
    staging.rmdir()
    _log(config, f"wrote {prefix}_{{train,valid}}_{{tokens,loss_mask}}.bin/.idx, .jsonl and _stats.json")
    return stats


def _stats(config, counts: Counts, items: dict, tokenizer, encoder: ChatEncoder, dtype, exclude_lines: dict) -> dict:
    seq_length = config.seq_length or config.max_length
    directions = sorted(counts.examples_in)
    per_direction = {}
    for d in directions:
        per_direction[d] = {
            "in": counts.examples_in[d],
            "train": sum(ex.direction == d for ex, _ in items["train"]),
            "valid": sum(ex.direction == d for ex, _ in items["valid"]),
            "dropped": {r: counts.dropped[d].get(r, 0) for r in DROP_REASONS},
        }
    dropped = {r: sum(v["dropped"][r] for v in per_direction.values()) for r in DROP_REASONS}
    return {
        "examples_in": sum(counts.examples_in.values()),
        "examples_out": {name: len(items[name]) for name in SPLITS},
        "dropped": dropped,
        "per_direction": per_direction,
        "leaks": {"exclude": dropped["leak_exclude"], "valid": dropped["leak_valid"], "first": counts.leaks},
        "normalized": {d: counts.normalized.get(d, 0) for d in directions},
        "normalized_messages": counts.normalized_messages,
        "retokenized_examples": sum(enc.retokenized for name in SPLITS for _, enc in items[name]),
        "seq_length": seq_length,
        "splits": {name: _token_stats(items[name], seq_length) for name in SPLITS},
        "tokenizer": config.tokenizer,
        "vocab_size": len(tokenizer),
        "eod_id": tokenizer.eos_token_id,
        "dtype": np.dtype(dtype).name,
        "template": encoder.template,
        "end_of_turn": encoder.end_of_turn,
        "exclude_lines": exclude_lines,
        "settings": {k: v for k, v in asdict(config).items() if k != "progress"},
    }
