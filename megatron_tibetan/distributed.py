"""Distributed initialisation: torch.distributed + megatron-core parallel_state for one process or a
torchrun/Slurm job, CPU or GPU. Used by conversion and training alike (bottom layer: imports no other
layer of the project but :mod:`megatron_tibetan.cpu`).

``init_parallel(tp, pp, device=...)`` is the one place that picks the backend: ``gloo`` and
:func:`megatron_tibetan.cpu.apply` on the CPU (no GPU, or ``device="cpu"`` on a machine that has one: CPU
then means CPU everywhere), ``nccl`` with ``cuda.set_device(LOCAL_RANK)`` otherwise.

Who launched this process (:func:`world`): torchrun (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``; it sets
``MASTER_ADDR``/``MASTER_PORT``), else a Slurm job step, i.e. ``srun`` (``SLURM_PROCID``,
``SLURM_STEP_NUM_TASKS``, ``SLURM_LOCALID``; ``MASTER_ADDR`` defaults to the step's first host from
``scontrol show hostnames``, ``MASTER_PORT`` to ``20000 + SLURM_JOB_ID % 20000``, so jobs sharing a node
differ), else nobody: a single process on a free local port. ``SLURM_NTASKS`` alone says nothing about
this process: it is also set in the batch script and in ``salloc``'s shell, where a plain ``python`` is
one process and must not wait for peers. Training may wrap it; conversion and the tests use it directly.
"""

from __future__ import annotations

import os
import socket
import subprocess
from datetime import timedelta

import torch

from megatron_tibetan import cpu


def _env_int(*names: str, default: int) -> int:
    for name in names:
        if os.environ.get(name):
            return int(os.environ[name])
    return default


def launcher() -> str:
    """"torchrun" (or anything that sets WORLD_SIZE), "slurm" (a task of an srun job step) or "none"."""
    if os.environ.get("WORLD_SIZE"):
        return "torchrun"
    if os.environ.get("SLURM_STEP_NUM_TASKS") and os.environ.get("SLURM_PROCID"):
        return "slurm"
    return "none"


def world() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) of this process as its launcher (:func:`launcher`) set it; (0, 1, 0) alone."""
    how = launcher()
    if how == "torchrun":
        return _env_int("RANK", default=0), _env_int("WORLD_SIZE", default=1), _env_int("LOCAL_RANK", default=0)
    if how == "slurm":
        return (_env_int("SLURM_PROCID", default=0), _env_int("SLURM_STEP_NUM_TASKS", default=1),
                _env_int("SLURM_LOCALID", default=0))
    return 0, 1, 0


def slurm_rendezvous() -> tuple[str, int]:
    """(MASTER_ADDR, MASTER_PORT) for the tasks of a Slurm job step: the environment's if set, else the
    step's first host (where task 0 runs) and a port derived from the job id (the same on every task)."""
    addr = os.environ.get("MASTER_ADDR")
    if not addr:
        nodes = os.environ.get("SLURM_STEP_NODELIST") or os.environ.get("SLURM_JOB_NODELIST") or ""
        if not nodes:
            raise RuntimeError("Slurm job step without SLURM_STEP_NODELIST: set MASTER_ADDR to the first node's address")
        if "[" in nodes or "," in nodes:  # a host list such as gpu[01-04]: let Slurm expand it
            try:
                out = subprocess.run(["scontrol", "show", "hostnames", nodes], capture_output=True, text=True, check=True)
            except (OSError, subprocess.CalledProcessError) as e:
                raise RuntimeError(f"cannot expand the node list {nodes!r} with scontrol ({e}): set MASTER_ADDR") from e
            nodes = out.stdout.split()[0]
        addr = nodes
    port = os.environ.get("MASTER_PORT") or 20000 + int(os.environ.get("SLURM_JOB_ID", "0")) % 20000
    return addr, int(port)


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
            # modulo: where Slurm binds one GPU per task (--gpus-per-task=1), a task sees only its own, as 0
            torch.cuda.set_device(local % torch.cuda.device_count())
        how = launcher()
        if how == "torchrun":
            init_method = None  # env://, which also joins torchrun's own store
        elif how == "slurm" and size > 1:
            addr, port = slurm_rendezvous()
            init_method = f"tcp://{addr}:{port}"
        else:  # a lone process gets its own port (an inherited MASTER_PORT may belong to a parent process)
            init_method = f"tcp://127.0.0.1:{_free_port()}"
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

