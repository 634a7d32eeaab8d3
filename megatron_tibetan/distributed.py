"""Distributed initialisation: torch.distributed + megatron-core parallel_state for one process or a
torchrun/Slurm job, CPU or GPU. Used by conversion and training alike (bottom layer: imports no other
layer of the project but :mod:`megatron_tibetan.cpu`).

``init_parallel(tp, pp, device=...)`` is the one place that picks the backend: ``gloo`` and
:func:`megatron_tibetan.cpu.apply` on the CPU (no GPU, or ``device="cpu"`` on a machine that has one: CPU
then means CPU everywhere), ``nccl`` with ``cuda.set_device(LOCAL_RANK)`` otherwise. Rank and world size come from the environment torchrun sets (``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``), else Slurm's (``SLURM_PROCID``, ``SLURM_NTASKS``,
``SLURM_LOCALID``; the launcher must export ``MASTER_ADDR``/``MASTER_PORT``), else a single process on a
free local port. Training may wrap it; conversion and the tests use it directly.
"""

from __future__ import annotations

import os
import socket
from datetime import timedelta

import torch

from megatron_tibetan import cpu


def _env_int(*names: str, default: int) -> int:
    for name in names:
        if os.environ.get(name):
            return int(os.environ[name])
    return default


def world() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from torchrun's or Slurm's environment; (0, 1, 0) otherwise."""
    rank = _env_int("RANK", "SLURM_PROCID", default=0)
    size = _env_int("WORLD_SIZE", "SLURM_NTASKS", default=1)
    local = _env_int("LOCAL_RANK", "SLURM_LOCALID", default=0)
    return rank, size, local


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def resolve_device(device: str | None = None) -> str:
    """"cuda" or "cpu": ``device`` as asked ("auto"/None: the GPU when torch sees one)."""
    if device in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device {device!r}: expected cpu, cuda or auto")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device cuda: torch sees no GPU (torch.cuda.is_available() is False)")
    return device


def init_parallel(tp: int = 1, pp: int = 1, seed: int = 1234, device: str | None = None, timeout_minutes: int = 30,
                  vpp: int | None = None) -> None:
    """Initialise torch.distributed (if not yet) and megatron-core's model-parallel groups and RNG.

    ``device`` None/"auto" means ``nccl`` on a GPU when torch sees one, else ``gloo`` on the CPU; "cpu"
    keeps everything on the CPU even on a machine with a GPU. Data parallel size is world // (tp * pp).
    ``vpp``: virtual pipeline stages per rank (interleaved schedule). Idempotent for the same sizes; other
    sizes rebuild megatron-core's groups (the process group stays).
    """
    from megatron.core import parallel_state
    from megatron.core.tensor_parallel import model_parallel_cuda_manual_seed

    use_gpu = resolve_device(device) == "cuda"
    if not use_gpu:
        cpu.apply(force=True)
    rank, size, local = world()
    if not torch.distributed.is_initialized():
        if use_gpu:
            torch.cuda.set_device(local)
        launched = "WORLD_SIZE" in os.environ or "SLURM_NTASKS" in os.environ
        # a lone process gets its own port (an inherited MASTER_PORT may belong to a parent process)
        init_method = None if launched else f"tcp://127.0.0.1:{_free_port()}"
        torch.distributed.init_process_group(
            backend="nccl" if use_gpu else "gloo",
            init_method=init_method,
            rank=rank,
            world_size=size,
            timeout=timedelta(minutes=timeout_minutes),
        )
    size = torch.distributed.get_world_size()
    if size % (tp * pp):
        raise ValueError(f"world size {size} is not divisible by tensor parallel {tp} x pipeline parallel {pp}")
    if parallel_state.model_parallel_is_initialized():
        if (
            parallel_state.get_tensor_model_parallel_world_size() == tp
            and parallel_state.get_pipeline_model_parallel_world_size() == pp
            and parallel_state.get_virtual_pipeline_model_parallel_world_size() == vpp
        ):
            return
        parallel_state.destroy_model_parallel()
    parallel_state.initialize_model_parallel(tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp,
                                             virtual_pipeline_model_parallel_size=vpp)
    model_parallel_cuda_manual_seed(seed)


def destroy_parallel() -> None:
    """Tear down megatron's groups and the default process group (tests that change TP/PP in one process)."""
    from megatron.core import parallel_state

    parallel_state.destroy_model_parallel()
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
