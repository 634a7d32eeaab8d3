"""The Megatron checkpoint directory, shared by the converter and the training loop.

    DIR/
      model.json          what the model is (HF config, family, padded vocabulary, tokenizer): export and
                          training need nothing else
      latest              the name of the newest *complete* iteration folder; moved only after a save ends
      iter_0000000/       a megatron-core dist_checkpointing checkpoint (torch_dist); the model's sharded
                          state dict under "model" (training adds optimizer, scheduler, RNG, data position)
"""

from __future__ import annotations

import json
import os
from pathlib import Path

MODEL_SPEC = "model.json"
LATEST = "latest"


def iteration_dir(root: str | Path, iteration: int) -> Path:
    return Path(root) / f"iter_{iteration:07d}"


def write_latest(root: str | Path, iteration: int) -> None:
    """Point ``latest`` at a finished save; atomic (a crash leaves the old pointer)."""
    root = Path(root)
    tmp = root / f".{LATEST}.tmp"
    tmp.write_text(iteration_dir(root, iteration).name + "\n")
    os.replace(tmp, root / LATEST)


def latest_iteration_dir(root: str | Path) -> Path:
    root = Path(root)
    pointer = root / LATEST
    if not pointer.is_file():
        raise FileNotFoundError(f"{root}: no '{LATEST}' file, so no complete checkpoint (is this a Megatron checkpoint directory?)")
    path = root / pointer.read_text().strip()
    if not path.is_dir():
        raise FileNotFoundError(f"{pointer} names {path.name}, which does not exist")
    return path


def save_model_spec(root: str | Path, spec: dict) -> None:
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".{MODEL_SPEC}.tmp"
    tmp.write_text(json.dumps(spec, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, root / MODEL_SPEC)


def load_model_spec(root: str | Path) -> dict:
    path = Path(root) / MODEL_SPEC
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: a Megatron checkpoint directory made by tools/convert_checkpoint.py import or by training has one")
    return json.loads(path.read_text())


# --- Training state: save, load, prune --------------------------------------------------------------------
#
# An iteration folder holds, through dist_checkpointing (torch_dist): the model ("model", or "model0",
# "model1"... for virtual pipeline chunks), the optimizer (sharded like the model, so it reshards with it),
# the RNG states of each (pipeline, tensor) rank as a ShardedObject, and as common state the LR scheduler and
# `train_state` (iteration, consumed samples, skipped steps, the parallel layout). A converted checkpoint has
# only the model: loading it starts training at iteration 0.
#
# A save writes into a hidden `.iter_NNNNNNN.partial` folder, renames it when every rank is done, and only
# then moves `latest`; a process killed mid-save leaves the previous checkpoint untouched and loadable.

TRAIN_STATE = "train_state"


def _barrier() -> None:
    import torch

    if torch.distributed.is_initialized():
        torch.distributed.barrier()


def _is_rank0() -> bool:
    import torch

    return not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0


def unwrap(module):
    """The GPTModel inside DDP / Float16Module wrappers (its sharded_state_dict has the global names)."""
    while hasattr(module, "module"):
        module = module.module
    return module


def _model_key(i: int, n: int) -> str:
    return "model" if n == 1 else f"model{i}"


def _model_sharded_state(model_chunks) -> dict:
    return {_model_key(i, len(model_chunks)): unwrap(m).sharded_state_dict() for i, m in enumerate(model_chunks)}


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


def parallel_layout() -> dict:
    from megatron.core import parallel_state

    return {
        "tp": parallel_state.get_tensor_model_parallel_world_size(),
        "pp": parallel_state.get_pipeline_model_parallel_world_size(),
        "dp": parallel_state.get_data_parallel_world_size(),
    }


def save_checkpoint(root, iteration: int, model_chunks, optimizer, scheduler, train_state: dict,
                    keep_last: int | None = None) -> Path:
    """Save everything needed to resume at ``iteration``; collective (every rank calls it)."""
    from megatron.core import dist_checkpointing

    root = Path(root)
    final = iteration_dir(root, iteration)
    partial = root / f".{final.name}.partial"
    if _is_rank0():
        _remove(partial)  # the remains of a save that was killed
        partial.mkdir(parents=True)
    _barrier()
    model_sd = _model_sharded_state(model_chunks)
    state = dict(model_sd)
    state["optimizer"] = optimizer.sharded_state_dict(model_sd, is_loading=False)
    state["rng_state"] = _rng_sharded(_rng_state())
    state["scheduler"] = scheduler.state_dict()
    state[TRAIN_STATE] = {**train_state, "iteration": iteration, "parallel": parallel_layout()}
    dist_checkpointing.save(state, str(partial))
    _barrier()
    if _is_rank0():
        _remove(final)
        os.replace(partial, final)
        write_latest(root, iteration)
        if keep_last:
            prune_checkpoints(root, keep_last)
    _barrier()
    return final


def _remove(path: Path) -> None:
    import shutil

    if path.is_dir():
        shutil.rmtree(path)


def prune_checkpoints(root, keep_last: int) -> list[Path]:
    """Delete all but the newest ``keep_last`` complete iteration folders (never the one ``latest`` names)."""
    root = Path(root)
    keep = latest_iteration_dir(root)
    folders = sorted(p for p in root.glob("iter_*") if p.is_dir())
    removed = [p for p in folders[:-keep_last] if p != keep]
    for p in removed:
        _remove(p)
    return removed


def load_checkpoint(path, model_chunks, optimizer=None, scheduler=None) -> dict | None:
    """Load an iteration folder into the model (and, when given, optimizer, scheduler and RNG).

    Returns the saved ``train_state`` when the optimizer state was loaded, None for weights only. The RNG
    state is restored only when the (pipeline, tensor) layout is the one it was saved with.
    """
    import torch
    from megatron.core import dist_checkpointing

    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"checkpoint folder {path} does not exist")
    common = dist_checkpointing.load_common_state_dict(str(path))
    full = optimizer is not None and TRAIN_STATE in common
    model_sd = _model_sharded_state(model_chunks)
    request = dict(model_sd)
    same_layout = full and {k: v for k, v in common[TRAIN_STATE]["parallel"].items() if k != "dp"} == {
        k: v for k, v in parallel_layout().items() if k != "dp"}
    if full:
        request["optimizer"] = optimizer.sharded_state_dict(model_sd, is_loading=True)
        if same_layout:
            request["rng_state"] = _rng_sharded(None)
    loaded = dist_checkpointing.load(request, str(path))
    for i, m in enumerate(model_chunks):
        unwrap(m).load_state_dict(loaded[_model_key(i, len(model_chunks))], strict=True)
    if not full:
        return None
    optimizer.load_state_dict(loaded["optimizer"])
    scheduler.load_state_dict(loaded["scheduler"])
    if same_layout:
        _set_rng_state(loaded["rng_state"])
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
    return loaded[TRAIN_STATE]
