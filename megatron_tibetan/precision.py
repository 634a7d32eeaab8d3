"""Which precision a device computes natively: ``auto`` means bf16 where the hardware has it, fp32 elsewhere.

A CPU computes bf16 natively with Intel AMX-BF16 or AVX512-BF16 (a 1024^3 matrix product 5-8x faster than
fp32 with PyTorch's CPU build); without them oneDNN emulates bf16, slower than fp32. A CUDA GPU does from
Ampere on (``torch.cuda.is_bf16_supported``). Training (``precision.dtype: auto``) and ``tools/evaluate.py
--dtype auto`` both resolve through :func:`resolve_dtype`."""

from __future__ import annotations

import functools
from pathlib import Path

import torch

CPU_BF16_FLAGS = ("amx_bf16", "avx512_bf16")


@functools.lru_cache(maxsize=None)
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where there is none, e.g. macOS)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.partition(":")[2].split())
    return frozenset()


def native_bf16(device: str) -> tuple[bool, str]:
    """(whether ``device`` computes bf16 natively, why) for "cpu" or "cuda"."""
    if device == "cuda":
        name = torch.cuda.get_device_name()
        if torch.cuda.is_bf16_supported():
            return True, f"{name} supports bf16"
        return False, f"{name} has no bf16"
    found = [flag for flag in CPU_BF16_FLAGS if flag in cpu_flags()]
    if found:
        return True, f"the CPU has {' and '.join(found)}"
    return False, f"the CPU has neither {' nor '.join(CPU_BF16_FLAGS)} (bf16 would be emulated, slower than fp32)"


def resolve_dtype(dtype: str, device: str) -> tuple[str, str | None]:
    """(torch dtype name, note) for ``dtype`` on ``device``: "auto" becomes bfloat16 or float32 with the reason;
    an explicit bfloat16 on a device without native bf16 runs, with a note that it will be slow."""
    if dtype not in ("auto", "bfloat16"):
        return dtype, None
    native, why = native_bf16(device)
    if dtype == "auto":
        chosen = "bfloat16" if native else "float32"
        return chosen, f"precision auto -> {chosen}: {why}"
    return dtype, None if native else f"warning: bfloat16 asked for, but {why}: expect it to be slow"
