"""The model a run trains: which one (resume, load, or from scratch) and megatron-core's wrapping of it
(Float16Module for bf16, DistributedDataParallel, the grad-sync hooks the pipeline schedule calls)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from megatron_tibetan import checkpoint_dir
from megatron_tibetan.config import ConfigError, TrainingConfig


def verified_iteration(root, strict: bool, message) -> Path:
    """The iteration folder of ``root`` to load (:func:`checkpoint_dir.newest_verified`), decided on rank 0 (it
    reads the files once) and sent to every rank; what was skipped goes to ``message``."""
    result = [None]
    if torch.distributed.get_rank() == 0:
        try:
            folder, notes = checkpoint_dir.newest_verified(root, strict)
            result = [(str(folder), notes, None)]
        except checkpoint_dir.CheckpointDamaged as error:
            result = [(None, [], str(error))]
    torch.distributed.broadcast_object_list(result, src=0)
    folder, notes, error = result[0]
    if error:
        raise checkpoint_dir.CheckpointDamaged(error)
    for note in notes:
        message(note)
    return Path(folder)


def resolve_model_spec(cfg: TrainingConfig, message=print) -> tuple[dict, Path | None]:
    """(model spec, iteration folder to load or None): resume from checkpoint.dir, else checkpoint.load,
    else a from-scratch model from model.hf_config. The folder is the newest that verifies against its
    manifest (``checkpoint.strict_load``: the tracker's or an error)."""
    from megatron_tibetan.models.gpt import load_model_spec_dir, make_model_spec

    own, strict = cfg.checkpoint.dir, cfg.checkpoint.strict_load
    if own and checkpoint_dir.has_checkpoint(own):
        return load_model_spec_dir(own), verified_iteration(own, strict, message)
    if cfg.checkpoint.load:
        return load_model_spec_dir(cfg.checkpoint.load), verified_iteration(cfg.checkpoint.load, strict, message)
    hf = cfg.model.hf_config
    if hf is None:
        raise ConfigError("no model: set model.hf_config (from scratch) or checkpoint.load (a converted checkpoint)")
    if isinstance(hf, str):
        path = Path(hf) / "config.json" if Path(hf).is_dir() else Path(hf)
        if not path.is_file():
            raise ConfigError(f"model.hf_config: {path} not found")
        hf = json.loads(path.read_text())
    return make_model_spec(hf, params_dtype=cfg.precision.dtype, tokenizer=cfg.data.tokenizer), None


def params_dtype(cfg: TrainingConfig) -> torch.dtype:
    """The dtype of the weights a run trains (``precision.dtype``)."""
    return getattr(torch, cfg.precision.dtype)  # the config speaks torch's names


def config_overrides(cfg: TrainingConfig) -> dict:
    """TransformerConfig fields a training config sets on top of the model's own."""
    m, prec = cfg.model, cfg.precision
    dtype = params_dtype(cfg)
    o = dict(
        calculate_per_token_loss=True,
        sequence_parallel=cfg.parallel.sequence_parallel,
        params_dtype=dtype,
        pipeline_dtype=dtype,
        bf16=prec.dtype == "bfloat16",
        fp16=False,
        virtual_pipeline_model_parallel_size=cfg.parallel.virtual_pipeline_model_parallel_size,
    )
    if m.hidden_dropout is not None:
        o["hidden_dropout"] = m.hidden_dropout
    if m.attention_dropout is not None:
        o["attention_dropout"] = m.attention_dropout
    if m.recompute_granularity:
        o.update(recompute_granularity=m.recompute_granularity)
        if m.recompute_granularity == "full":
            o.update(recompute_method="uniform", recompute_num_layers=m.recompute_num_layers)
    if prec.fp8:
        o.update(fp8=prec.fp8, fp8_recipe=prec.fp8_recipe, fp8_amax_history_len=prec.fp8_amax_history_len,
                 fp8_amax_compute_algo=prec.fp8_amax_compute_algo)
    return o


def build_model_chunks(cfg: TrainingConfig, spec: dict, device: str, use_te: bool) -> list:
    """This rank's model chunks (one, or one per virtual pipeline stage), wrapped for training; the shared
    TransformerConfig carries the DDP hooks the pipeline schedule calls."""
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig, finalize_model_grads
    from megatron.core.transformer.module import Float16Module

    from megatron_tibetan.models.gpt import build_gpt_model

    p = cfg.parallel
    vpp = p.virtual_pipeline_model_parallel_size
    chunks = [build_gpt_model(spec, use_te=use_te, vp_stage=vp if vpp else None, device=device, **config_overrides(cfg))
              for vp in range(vpp or 1)]
    config = chunks[0].config
    if device == "cuda":
        chunks = [m.cuda(torch.cuda.current_device()) for m in chunks]
    if config.bf16:
        chunks = [Float16Module(config, m) for m in chunks]
    ddp_config = DistributedDataParallelConfig(
        grad_reduce_in_fp32=True,
        overlap_grad_reduce=p.overlap_grad_reduce,
        overlap_param_gather=p.overlap_param_gather,
        use_distributed_optimizer=p.use_distributed_optimizer,
    )
    chunks = [DistributedDataParallel(config=config, ddp_config=ddp_config, module=m, disable_bucketing=i > 0)
              for i, m in enumerate(chunks)]
    for m in chunks:
        m.broadcast_params()  # data-parallel replicas start equal

    def per_chunk(name):
        return getattr(chunks[0], name) if len(chunks) == 1 else [getattr(m, name) for m in chunks]

    config.no_sync_func = per_chunk("no_sync")
    if p.overlap_grad_reduce:
        config.grad_sync_func = per_chunk("start_grad_sync")
    config.finalize_model_grads_func = finalize_model_grads
    return chunks
