"""Training state in a checkpoint: optimizer, LR scheduler, RNG and data position, saved and loaded through
the directory layout and the atomic writer of :mod:`megatron_tibetan.checkpoint_dir`.

An iteration folder holds, through dist_checkpointing (torch_dist): the model ("model", or "model0",
"model1"... for virtual pipeline chunks), the optimizer (sharded like the model, so it reshards with it),
the RNG states of each (pipeline, tensor) rank as a ShardedObject, and as common state the LR scheduler
(``opt_param_scheduler``, Megatron-LM's key), the iteration and ``train_state`` (consumed samples, skipped
steps, the parallel layout). A converted checkpoint has only the model: loading it starts training at
iteration 0.
"""

from __future__ import annotations

from pathlib import Path

from megatron_tibetan import checkpoint_dir
from megatron_tibetan.checkpoint_dir import model_sharded_state

TRAIN_STATE = "train_state"
SCHEDULER = "opt_param_scheduler"
# The distributed optimizer's state as each data-parallel rank holds it (Megatron-LM's default format): it
# loads at the same TP x PP with any DP size. megatron-core's default (fully_sharded_model_space) is refused by
# its own ShardedTensor checks, and fully_reshardable cannot load torch's AdamW, the optimizer megatron-core
# steps with when neither Transformer Engine nor Apex is installed.
DISTRIBUTED_OPTIMIZER_FORMAT = {"distrib_optim_sharding_type": "dp_reshardable"}


def _rng_state() -> dict:
    import random

    import numpy
    import torch
    from megatron.core import tensor_parallel

    return {
        "random": random.getstate(),
        "numpy": numpy.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None,
        "tracker": tensor_parallel.get_cuda_rng_tracker().get_states(),
    }


def _set_rng_state(state: dict) -> None:
    import random

    import numpy
    import torch
    from megatron.core import tensor_parallel

    random.setstate(state["random"])
    numpy.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
    tensor_parallel.get_cuda_rng_tracker().set_states(state["tracker"])


def _rng_sharded(data):
    """One RNG state per (pipeline, tensor) rank; data-parallel replicas share their first replica's."""
    from megatron.core import parallel_state
    from megatron.core.dist_checkpointing.mapping import ShardedObject

    return ShardedObject(
        "rng_state",
        data,
        (parallel_state.get_pipeline_model_parallel_world_size(), parallel_state.get_tensor_model_parallel_world_size()),
        (parallel_state.get_pipeline_model_parallel_rank(), parallel_state.get_tensor_model_parallel_rank()),
        replica_id=parallel_state.get_data_parallel_rank(),
    )


def _sharded_optimizer_state(optimizer, model_sd: dict, is_loading: bool):
    distributed = _distributed_optimizers(optimizer)
    for torch_adam in _torch_adams(distributed):
        _initialise_torch_adam_state(torch_adam)
    metadata = {"metadata": DISTRIBUTED_OPTIMIZER_FORMAT} if distributed else {}
    return optimizer.sharded_state_dict(model_sd, is_loading=is_loading, **metadata)


def _distributed_optimizers(optimizer) -> list:
    from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer

    return [o for o in getattr(optimizer, "chained_optimizers", [optimizer]) if isinstance(o, DistributedOptimizer)]


def _torch_adams(distributed: list) -> list:
    import torch

    return [o.optimizer for o in distributed if isinstance(o.optimizer, (torch.optim.Adam, torch.optim.AdamW))]


def _initialise_torch_adam_state(adam) -> None:
    """megatron-core's distributed optimizer reads torch Adam's per-parameter step count from its state, which
    a never-stepped optimizer (about to load one) lacks: give it the state of step 0, as torch would."""
    import torch

    for group in adam.param_groups:
        on_device = group.get("fused") or group.get("capturable")
        for p in group["params"]:
            if not adam.state[p]:
                adam.state[p].update(step=torch.zeros((), dtype=torch.float32, device=p.device if on_device else "cpu"),
                                     exp_avg=torch.zeros_like(p), exp_avg_sq=torch.zeros_like(p))


def _restore_torch_adam_steps(optimizer) -> None:
    """megatron-core (0.16-0.19) loads torch Adam's step count into the param groups, gives every parameter
    one shared step tensor (which torch's step then advances once per parameter) and overwrites it with the
    loading optimizer's own count: give each parameter its own tensor holding the loaded count."""
    import torch

    for adam in _torch_adams(_distributed_optimizers(optimizer)):
        for group in adam.param_groups:
            if "step" in group:
                for p in group["params"]:
                    old = adam.state[p]["step"]
                    adam.state[p]["step"] = torch.tensor(float(group["step"]), dtype=old.dtype, device=old.device)


def _set_group_schedules(optimizer, old: dict, new: dict) -> None:
    """Param groups that follow the schedule's ``old`` LR/WD values (no per-group override) take ``new``'s."""
    for group in optimizer.param_groups:
        for key in ("max_lr", "min_lr", "start_wd", "end_wd"):
            if group.get(key) is not None and key in old and group[key] == old[key]:
                group[key] = new[key]


def parallel_layout() -> dict:
    from megatron.core import parallel_state

    return {
        "tp": parallel_state.get_tensor_model_parallel_world_size(),
        "pp": parallel_state.get_pipeline_model_parallel_world_size(),
        "dp": parallel_state.get_data_parallel_world_size(),
    }


def save_checkpoint(root, iteration: int, model_chunks, optimizer, scheduler, train_state: dict, spec: dict,
                    config_text: str | None = None, keep_last: int | None = None, protect=()) -> Path:
    """Save everything needed to resume at ``iteration``; collective (every rank calls it)."""
    model_sd = model_sharded_state(model_chunks)
    state = dict(model_sd)
    state["optimizer"] = _sharded_optimizer_state(optimizer, model_sd, is_loading=False)
    state["rng_state"] = _rng_sharded(_rng_state())
    state[SCHEDULER] = scheduler.state_dict()
    state[TRAIN_STATE] = {**train_state, "iteration": iteration, "parallel": parallel_layout()}
    return checkpoint_dir.save_iteration(root, iteration, state, spec=spec, config_text=config_text,
                                         keep_last=keep_last, protect=protect)


def has_training_state(path) -> bool:
    """Whether an iteration folder was written by training (a converted one has only the model)."""
    from megatron.core import dist_checkpointing

    return TRAIN_STATE in dist_checkpointing.load_common_state_dict(str(path))


def schedule_changes(saved: dict, scheduler) -> dict:
    """{setting: (checkpoint value, config value)} for the LR/WD schedule settings that differ."""
    current = scheduler.state_dict()
    return {k: (saved[k], v) for k, v in current.items() if k != "num_steps" and k in saved and saved[k] != v}


def load_checkpoint(path, model_chunks, optimizer, scheduler, override_schedule: bool = False) -> tuple[dict, dict]:
    """Resume: load an iteration folder written by training into the model, optimizer, scheduler and (when
    the (pipeline, tensor) layout is the one it was saved with) the RNG.

    Returns (the saved ``train_state``, the schedule settings that differ between checkpoint and config as
    :func:`schedule_changes` gives them). The checkpoint's schedule is kept unless ``override_schedule``.
    """
    import torch
    from megatron.core import dist_checkpointing

    path = Path(path)
    common = dist_checkpointing.load_common_state_dict(str(path))
    model_sd = model_sharded_state(model_chunks)
    request = dict(model_sd)
    same_layout = {k: v for k, v in common[TRAIN_STATE]["parallel"].items() if k != "dp"} == {
        k: v for k, v in parallel_layout().items() if k != "dp"}
    request["optimizer"] = _sharded_optimizer_state(optimizer, model_sd, is_loading=True)
    if same_layout:
        request["rng_state"] = _rng_sharded(None)
    loaded = dist_checkpointing.load(request, str(path))
    checkpoint_dir.set_model_state(model_chunks, loaded)
    saved_schedule = loaded[SCHEDULER] if SCHEDULER in loaded else loaded["scheduler"]
    changed = schedule_changes(saved_schedule, scheduler)
    # megatron-core >= 0.17 pairs saved and current param groups by their LR/WD values too: the current groups
    # take the checkpoint's to load, and get the config's back when those are to apply
    configured = scheduler.state_dict()
    _set_group_schedules(optimizer, configured, saved_schedule)
    with torch.no_grad():  # the fp32 distributed optimizer's main params are views of the model's (leaves)
        optimizer.load_state_dict(loaded["optimizer"])
    _restore_torch_adam_steps(optimizer)
    if override_schedule:
        _set_group_schedules(optimizer, saved_schedule, configured)
    scheduler.override_opt_param_scheduler = override_schedule
    scheduler.load_state_dict(saved_schedule)
    if same_layout:
        _set_rng_state(loaded["rng_state"])
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
    return loaded[TRAIN_STATE], changed
