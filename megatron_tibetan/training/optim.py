"""Optimizer and learning-rate schedule: megatron-core's get_megatron_optimizer and OptimizerParamScheduler."""

from __future__ import annotations

import torch

from megatron_tibetan.config import ConfigError


def warmup_iterations(cfg, iterations: int) -> int:
    s = cfg.schedule
    if s.warmup_iterations is not None:
        return s.warmup_iterations
    return int(round(s.warmup_fraction * decay_iterations(cfg, iterations)))


def decay_iterations(cfg, iterations: int) -> int:
    """``schedule.decay_iterations``, else the run's ``iterations`` (train.iterations, or what train.epochs gives)."""
    return max(cfg.schedule.decay_iterations or iterations, 1)


def build_optimizer(cfg, model_chunks):
    """AdamW over the DDP-wrapped chunks (megatron-core picks fused Adam on GPU, torch AdamW on CPU)."""
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer

    o = cfg.optimizer
    config = OptimizerConfig(
        optimizer=o.name,
        lr=o.lr,
        min_lr=o.min_lr,
        weight_decay=o.weight_decay,
        adam_beta1=o.adam_beta1,
        adam_beta2=o.adam_beta2,
        adam_eps=o.adam_eps,
        clip_grad=o.clip_grad,
        bf16=cfg.precision.dtype == "bfloat16",
        params_dtype=getattr(torch, cfg.precision.dtype),
        use_distributed_optimizer=cfg.parallel.use_distributed_optimizer,
        overlap_param_gather=cfg.parallel.overlap_param_gather,
    )
    optimizer = get_megatron_optimizer(config, model_chunks)
    for inner in getattr(optimizer, "chained_optimizers", [optimizer]):
        if type(inner.optimizer) in (torch.optim.AdamW, torch.optim.Adam):
            use_fused_kernel(inner.optimizer)
            inner.optimizer.register_load_state_dict_post_hook(use_fused_kernel)  # a checkpoint restores the flags
    return optimizer


def use_fused_kernel(optimizer: torch.optim.Optimizer) -> None:
    """Without Transformer Engine or Apex megatron-core steps with torch's Adam(W) at its default kernel: on
    CPU a Python loop of about ten passes over every tensor. torch's fused kernel does the same update in
    one pass; every group whose tensors it takes (floating point, CPU or CUDA) is switched to it."""
    for group in optimizer.param_groups:
        if all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in group["params"]):
            group["fused"], group["foreach"] = True, False


def build_scheduler(cfg, optimizer, iterations: int):
    """Linear warmup from ``schedule.init_lr`` to ``optimizer.lr``, then decay to ``optimizer.min_lr``."""
    from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

    decay = decay_iterations(cfg, iterations)
    warmup = warmup_iterations(cfg, iterations)
    if warmup >= decay:
        raise ConfigError(f"schedule: {warmup} warmup iterations leave none of the {decay} decay iterations (train.iterations or schedule.decay_iterations)")
    wd = cfg.optimizer.weight_decay
    return OptimizerParamScheduler(
        optimizer,
        init_lr=cfg.schedule.init_lr,
        max_lr=cfg.optimizer.lr,
        min_lr=cfg.optimizer.min_lr,
        lr_warmup_steps=warmup,
        lr_decay_steps=decay,
        lr_decay_style=cfg.schedule.decay_style,
        start_wd=wd,
        end_wd=wd,
        wd_incr_steps=decay,
        wd_incr_style="constant",
        # a resumed run keeps the schedule it was saved with; a changed config is reported by megatron-core
        use_checkpoint_opt_param_scheduler=True,
        override_opt_param_scheduler=False,
    )
