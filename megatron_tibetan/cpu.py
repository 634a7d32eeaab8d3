"""Run megatron-core on a CPU-only torch (development, CI): the few places where it assumes CUDA.

megatron-core (0.16) calls CUDA in four kinds of place that no config flag avoids (see
``../shared/notes/megatron-core-on-cpu.md``). :func:`apply` adjusts exactly those, once, and only when
``torch.cuda.is_available()`` is False; on a GPU it does nothing. None of the adjustments touches a
computation: they say *where* tensors live (the CPU) and *which* generator holds the random state (the
CPU's), so TP=2 gives the same numbers as TP=1 and a CPU run the same numbers as without them.

1. Allocation device. ``torch.cuda.current_device()`` is used as ``device=`` in ~110 places (the
   global memory buffer of ``DotProductAttention``, ``param_and_grad_buffer`` of the DDP wrapper,
   ``p2p_communication`` shape exchange, ``tensor_parallel.mappings``...). It returns the CPU device
   (inside autograd's backward too, where (3) is suspended).
2. RNG tracker. ``tensor_parallel.random.CudaRNGStatesTracker.add/fork``,
   ``model_parallel_cuda_manual_seed`` and activation recompute (``CheckpointFunction``) save, seed and
   restore the CUDA generator through ``torch.cuda.get_rng_state/set_rng_state/manual_seed`` and
   ``random._get_cuda_rng_state/_set_cuda_rng_state``. On CPU these act on the CPU default generator,
   the one that CPU dropout and init draw from, so the named forks (TP init and dropout streams, the
   data-parallel stream) keep their semantics. ``fork`` then logs "CPU RNG state changed within GPU
   RNG context" at every draw (on CPU the two are one generator, by design): that message is filtered.
3. ``device="cuda"`` literals and ``torch.cuda.synchronize()``: pipeline schedules
   (``total_num_tokens = torch.zeros(..., device="cuda")``), ``p2p_communication`` (synchronize after
   batched isend/irecv), ``clip_grads.clip_grad_by_total_norm_fp32`` (``dummy_overflow_buf``), and
   ``.cuda()`` calls. A ``TorchFunctionMode`` (the mechanism behind ``torch.device`` as a context
   manager) rewrites a CUDA ``device=`` to the CPU and makes ``.cuda()`` a no-op; synchronize is a no-op.
   torch suspends a mode while it handles a call (``Tensor.backward`` included), so activation
   recompute, which re-runs the forward inside ``CheckpointFunction.backward``, re-enters the mode.
4. CUDA tensor-type checks. ``clip_grads`` asserts ``grad.type() == 'torch.cuda.FloatTensor'``;
   ``Float16OptimizerWithFloat16Params`` and the distributed optimizer branch on
   ``param.type() in ['torch.cuda.HalfTensor', 'torch.cuda.BFloat16Tensor']``. When the caller is a
   ``megatron.core`` module, ``Tensor.type()`` reports the CUDA name of the same dtype; everyone else
   gets the true answer.

The mode lives on the thread that called :func:`apply` (megatron-core runs its forward, backward and
schedules there). Use: ``megatron_tibetan.cpu.apply()`` before building models (``megatron_tibetan.models.parallel``
calls it for you when it initialises a gloo/CPU run).
"""

from __future__ import annotations

import logging
import sys

import torch
from torch.overrides import TorchFunctionMode

_CPU = torch.device("cpu")
_applied = False
_mode: "_CudaToCpu | None" = None


def needed() -> bool:
    """True when no GPU is in use, i.e. megatron-core needs the adjustments."""
    return not torch.cuda.is_available()


def is_applied() -> bool:
    return _applied


def apply(force: bool = False) -> bool:
    """Apply the adjustments once (idempotent). Returns whether active.

    Without ``force`` it is a no-op when CUDA is available. ``force=True`` is a CPU run on a machine that
    has a GPU (``train.device=cpu``): torch then reports no GPU to everyone in this process, so
    megatron-core allocates parameters, buffers and inputs on the CPU as it does on a CPU-only machine.
    """
    global _applied, _mode
    if _applied:
        return True
    if not needed():
        if not force:
            return False
        torch.cuda.is_available = lambda: False
    _patch_cuda_functions()
    _mode = _CudaToCpu()
    _patch_megatron_rng(_mode)
    _mode.__enter__()  # stays on the mode stack of this thread for the life of the process
    _applied = True
    return True


# --- 1 and 2: torch.cuda functions megatron-core calls directly ----------------------------------------

def _patch_cuda_functions() -> None:
    cuda = torch.cuda
    cuda.current_device = lambda: _CPU  # (1) used as device=..., also inside autograd's backward
    cuda.synchronize = lambda device=None: None  # (3) p2p_communication after batched isend/irecv
    # (3) megatron-core >= 0.17 waits on the current stream in every DDP grad sync: the CPU's no-op stream
    cuda.current_stream = lambda device=None: torch.cpu.current_stream()
    # (2) the "device generator" is the CPU default generator: CudaRNGStatesTracker.add,
    # model_parallel_cuda_manual_seed and CheckpointFunction call these
    cuda.get_rng_state = lambda device="cuda": torch.get_rng_state()
    cuda.set_rng_state = lambda new_state, device="cuda": torch.set_rng_state(new_state)
    cuda.manual_seed = lambda seed: torch.manual_seed(seed)
    torch.cuda.random.get_rng_state = cuda.get_rng_state
    torch.cuda.random.set_rng_state = cuda.set_rng_state


def _patch_megatron_rng(mode) -> None:
    # (2) CudaRNGStatesTracker.fork and CheckpointFunction use these module-level helpers
    from megatron.core.tensor_parallel import random as mp_random

    mp_random._get_cuda_rng_state = lambda device="cuda", clone=False, graph_safe=False: torch.get_rng_state()
    mp_random._set_cuda_rng_state = lambda new_state, device=-1, graph_safe=False: torch.set_rng_state(new_state)
    logging.getLogger(mp_random.__name__).addFilter(
        lambda record: "CPU RNG state changed within GPU RNG context" not in record.getMessage()
    )
    # (3) the recompute forward runs inside autograd's backward, where the caller's mode is suspended
    original = mp_random.CheckpointFunction.backward

    def backward(ctx, *args):
        with mode:
            return original(ctx, *args)

    mp_random.CheckpointFunction.backward = staticmethod(backward)


# --- 3 and 4: device literals and tensor-type checks -----------------------------------------------------

_CUDA_TYPE_NAMES = {
    torch.float32: "torch.cuda.FloatTensor",
    torch.float16: "torch.cuda.HalfTensor",
    torch.bfloat16: "torch.cuda.BFloat16Tensor",
}


def _is_cuda(device) -> bool:
    if isinstance(device, int):
        return True  # a bare index means a CUDA device to torch
    if isinstance(device, str):
        return device.startswith("cuda")
    return isinstance(device, torch.device) and device.type == "cuda"


def _called_from_megatron() -> bool:
    # frame 0: here, 1: __torch_function__, 2: the caller of Tensor.type
    name = sys._getframe(2).f_globals.get("__name__", "")
    return name.startswith("megatron.core")


class _CudaToCpu(TorchFunctionMode):
    """(3) CUDA devices become the CPU; (4) megatron-core sees CUDA type names for CPU float tensors."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if "device" in kwargs and _is_cuda(kwargs["device"]):
            kwargs = {**kwargs, "device": "cpu"}
        if func is torch.Tensor.cuda:
            return args[0]
        if func is torch.Tensor.to and len(args) > 1 and _is_cuda(args[1]):
            args = (args[0], "cpu", *args[2:])
        if func is torch.Tensor.type and len(args) == 1 and not kwargs.get("dtype"):
            if args[0].dtype in _CUDA_TYPE_NAMES and _called_from_megatron():
                return _CUDA_TYPE_NAMES[args[0].dtype]
        return func(*args, **kwargs)
