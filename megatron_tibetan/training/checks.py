"""Start-up checks that need the hardware, the world size or the model: each failure says what to change."""

from __future__ import annotations

import importlib.util

import torch

from megatron_tibetan.config import ConfigError


def resolve_device(cfg) -> str:
    want = cfg.train.device
    if want == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device is cuda but torch sees no GPU (torch.cuda.is_available() is False)")
    if want == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return want


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
        if p.use_distributed_optimizer:
            raise ConfigError(
                "parallel.use_distributed_optimizer is not supported on CPU: with megatron-core's torch-AdamW "
                "fallback its checkpoints cannot be saved and reloaded; set it to false (GPU runs may use it)"
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
