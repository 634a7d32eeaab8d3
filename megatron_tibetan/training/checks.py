"""Start-up checks that need the hardware, the world size or the model: each failure says what to change."""

from __future__ import annotations

import importlib.util

import torch

from megatron_tibetan.config import ConfigError
from megatron_tibetan.precision import resolve_dtype


def resolve_device(cfg) -> str:
    """"cpu" or "cuda" for ``train.device``; "cpu" stays the CPU on a machine with a GPU."""
    from megatron_tibetan.distributed import resolve_device as resolve

    try:
        return resolve(cfg.train.device)
    except ValueError as e:
        raise ConfigError(f"train.{e}") from None


def use_transformer_engine(cfg, device: str) -> bool:
    impl = cfg.model.transformer_impl
    have_te = importlib.util.find_spec("transformer_engine") is not None
    if impl == "transformer_engine":
        if device != "cuda":
            raise ConfigError("model.transformer_impl transformer_engine needs a GPU; use local (or auto) on CPU")
        if not have_te:
            raise ConfigError("model.transformer_impl is transformer_engine but transformer_engine is not installed")
        return True
    return impl == "auto" and device == "cuda" and have_te


def check_device(cfg, device: str, use_te: bool) -> None:
    p = cfg.parallel
    if device == "cpu":
        if p.sequence_parallel:
            raise ConfigError(
                "parallel.sequence_parallel is not available on CPU: the local layer spec's torch LayerNorm "
                "does not support it (it needs the Transformer Engine spec on a GPU); set it to false"
            )
        if cfg.precision.fp8:
            raise ConfigError("precision.fp8 needs Transformer Engine on a Hopper (or newer) GPU; unset it on CPU")
        return
    if p.sequence_parallel and not use_te:
        raise ConfigError("parallel.sequence_parallel needs the Transformer Engine layer spec (model.transformer_impl)")
    if cfg.precision.fp8:
        if not use_te:
            raise ConfigError(f"precision.fp8 {cfg.precision.fp8!r} needs Transformer Engine, which is not in use or not installed")
        major, minor = torch.cuda.get_device_capability()
        if (major, minor) < (8, 9):
            raise ConfigError(
                f"precision.fp8 needs a Hopper/Ada (compute capability >= 8.9) GPU; "
                f"{torch.cuda.get_device_name()} is {major}.{minor}"
            )


def resolve_precision(cfg, device: str) -> str | None:
    """Sets ``precision.dtype`` "auto" to what ``device`` computes natively; the note to print, if any."""
    cfg.precision.dtype, note = resolve_dtype(cfg.precision.dtype, device)
    return note


def check_world(cfg, world_size: int) -> int:
    """The data-parallel size, after checking that the world and the batch divide as configured."""
    tp, pp = cfg.parallel.tensor_model_parallel_size, cfg.parallel.pipeline_model_parallel_size
    if world_size % (tp * pp):
        raise ConfigError(
            f"world size {world_size} is not divisible by parallel.tensor_model_parallel_size ({tp}) x "
            f"parallel.pipeline_model_parallel_size ({pp})"
        )
    dp = world_size // (tp * pp)
    per_step = cfg.batch.micro_batch_size * dp
    if cfg.batch.global_batch_size % per_step:
        raise ConfigError(
            f"batch.global_batch_size ({cfg.batch.global_batch_size}) is not divisible by "
            f"batch.micro_batch_size ({cfg.batch.micro_batch_size}) x data-parallel size ({dp})"
        )
    return dp


def check_model(cfg, spec: dict, vocab_size: int) -> None:
    """TP/PP against the model's shape, and the data's vocabulary against the model's embedding."""
    from megatron_tibetan.models.gpt import check_parallel

    hf = spec["hf_config"]
    tp, pp = cfg.parallel.tensor_model_parallel_size, cfg.parallel.pipeline_model_parallel_size
    try:
        check_parallel(hf, spec["padded_vocab_size"], tp, pp)
    except ValueError as e:
        raise ConfigError(f"parallel: {e}") from e
    vpp = cfg.parallel.virtual_pipeline_model_parallel_size
    if vpp and hf["num_hidden_layers"] % (pp * vpp):
        raise ConfigError(
            f"parallel.virtual_pipeline_model_parallel_size {vpp} x pipeline {pp} does not divide "
            f"num_hidden_layers={hf['num_hidden_layers']}"
        )
    if vocab_size > spec["padded_vocab_size"]:
        raise ConfigError(
            f"data.tokenizer {cfg.data.tokenizer!r} has {vocab_size} ids but the model's embedding has "
            f"{spec['padded_vocab_size']} rows: extend the model's vocabulary first (or use the model's tokenizer)"
        )


def resolve_tokenizer(cfg, spec: dict, warn) -> str:
    """The tokenizer of the run: ``data.tokenizer``, else the one the checkpoint was trained with (its
    model.json), so later stages inherit it. A different one than the checkpoint's is reported."""
    own, recorded = cfg.data.tokenizer, spec.get("tokenizer")
    if own is None and recorded is None:
        raise ConfigError("data.tokenizer is not set and the model names no tokenizer (model.json 'tokenizer'): "
                          "set data.tokenizer to the tokenizer the dataset was written with")
    if own is not None and recorded is not None and _same_spec(own, recorded) is False:
        warn(f"WARNING: data.tokenizer is {own!r} but the checkpoint was trained with {recorded!r}")
    return own if own is not None else recorded


def _same_spec(a: str, b: str) -> bool:
    from pathlib import Path

    return a == b or (Path(a).exists() and Path(b).exists() and Path(a).resolve() == Path(b).resolve())


def _same_tokenizer(a: str, b: str) -> bool:
    """The same spec or path, or two specs whose vocabularies are identical (a tokenizer saved elsewhere)."""
    if _same_spec(a, b):
        return True
    from megatron_tibetan.tokenizer.base import load_tokenizer

    try:
        return load_tokenizer(a).get_vocab() == load_tokenizer(b).get_vocab()
    except (OSError, ValueError):  # the dataset's tokenizer is not at hand: the names must do
        return False


def check_dataset_tokenizer(cfg, tokenizer) -> None:
    """Refuse a dataset written with another tokenizer: its ``<prefix>_stats.json`` (written by
    tools/preprocess_data.py and tools/prepare_sft.py) names the tokenizer, vocabulary size and eod id."""
    from megatron_tibetan.config import data_blend
    from megatron_tibetan.data.pretraining import dataset_stats

    prefixes = data_blend(cfg.data.paths, cfg.data.weights)[0] + list(cfg.validation.paths or [])
    for prefix in prefixes:
        found = dataset_stats(prefix)
        if found is None:
            continue  # a dataset written elsewhere (e.g. by Megatron-LM) has no stats file: nothing to compare
        path, stats = found
        theirs = (stats.get("tokenizer"), stats.get("vocab_size"), stats.get("eod_id"))
        ours = (tokenizer.name, tokenizer.vocab_size, tokenizer.eod)
        eod_differs = theirs[2] is not None and theirs[2] != ours[2]  # None: written without --append-eod
        if theirs[1] != ours[1] or eod_differs or not _same_tokenizer(str(theirs[0]), ours[0]):
            raise ConfigError(
                f"{prefix} was written with tokenizer {theirs[0]!r} (vocabulary {theirs[1]}, eod {theirs[2]}; {path}) "
                f"but this run uses {ours[0]!r} (vocabulary {ours[1]}, eod {ours[2]}): rebuild the dataset with this "
                "tokenizer, or set data.tokenizer to the one it was written with"
            )
