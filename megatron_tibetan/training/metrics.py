"""Metrics of a run: ``logging.dir/metrics.jsonl`` (one JSON object per logged step), TensorBoard, a console line.

Only the global rank 0 writes. Validation results go to the same file with ``"split": "valid"``.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

# Peak dense BF16 tensor throughput per device, for MFU (FLOP/s).
PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "B200": 2250e12}


def flops_per_token(hf: dict, seq_length: int) -> float:
    """Training FLOPs per token (forward + backward = 3x forward) of a dense decoder: 6N plus attention."""
    h, layers = hf["hidden_size"], hf["num_hidden_layers"]
    heads = hf["num_attention_heads"]
    kv = hf.get("num_key_value_heads") or heads
    hd = hf.get("head_dim") or h // heads
    ffn = hf["intermediate_size"]
    per_layer = 2 * h * hd * (heads + 2 * kv) + 2 * heads * hd * h + 3 * 2 * h * ffn
    attention = 2 * 2 * seq_length * heads * hd  # scores and weighted sum
    logits = 2 * h * hf["vocab_size"]
    return 3 * (layers * (per_layer + attention) + logits)


def measure_matmul_flops(size: int = 8192, dtype=None, repeats: int = 10, warmup: int = 3, device=None) -> dict:
    """The dense matrix-product rate this device reaches, as the ceiling for MFU measured in the same run
    (datasheet peaks are leads): the median of ``repeats`` products of two random ``size`` x ``size``
    matrices after ``warmup`` untimed ones, timed with CUDA events on a GPU, a clock on the CPU. Random
    data, never zeros (which multiply faster on some GPUs). Returns ``flops`` (FLOP/s) and the timings."""
    import statistics

    import torch

    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = dtype or torch.bfloat16
    a, b = (torch.randn(size, size, device=device, dtype=dtype) for _ in range(2))
    times = []
    for i in range(warmup + repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            torch.mm(a, b)
            end.record()
            end.synchronize()
            seconds = start.elapsed_time(end) / 1e3
        else:
            begin = time.perf_counter()
            torch.mm(a, b)
            seconds = time.perf_counter() - begin
        if i >= warmup:
            times.append(seconds)
    median = statistics.median(times)
    return {"flops": 2 * size**3 / median, "size": size, "dtype": str(dtype).replace("torch.", ""),
            "median_ms": median * 1e3, "times_ms": [t * 1e3 for t in times]}


def peak_flops() -> float | None:
    import torch

    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    return next((v for k, v in PEAK_FLOPS.items() if k in name), None)


class Throughput:
    """Tokens/s, step time, TFLOP/s and MFU over the training steps since the last report.

    Only the time inside :meth:`step` counts, so validation and saves between steps never inflate or
    deflate the figures, and a partial interval (a resumed run, the last step) divides by the steps it had.
    """

    def __init__(self, flops_per_token: float, peak_flops: float | None, device: str, world_size: int):
        self.flops_per_token, self.peak_flops = flops_per_token, peak_flops
        self.device, self.world_size = device, world_size
        self.steps, self.tokens, self.seconds = 0, 0.0, 0.0

    def step(self, run, tokens: float):
        """Run one step (``run()``), timing it; ``tokens`` it processes (sequence tokens, all ranks)."""
        start = time.perf_counter()
        out = run()
        if self.device == "cuda":
            import torch

            torch.cuda.synchronize()
        self.seconds += time.perf_counter() - start
        self.steps += 1
        self.tokens += tokens
        return out

    def report(self) -> dict:
        """The figures since the last report; starts a new interval."""
        if not self.steps:
            return {}
        out = {"step_time_s": self.seconds / self.steps, "tokens_per_s": self.tokens / self.seconds}
        if self.device == "cuda":
            import torch

            tflops = self.flops_per_token * self.tokens / self.seconds / self.world_size
            out["tflops_per_device"] = tflops / 1e12
            if self.peak_flops:
                out["mfu"] = tflops / self.peak_flops
            out["max_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
        self.steps, self.tokens, self.seconds = 0, 0.0, 0.0
        return out


class MetricsLogger:
    def __init__(self, log_dir: str | Path, enabled: bool, tensorboard: bool = True, progress: bool = True,
                 total: int | None = None, initial: int = 0):
        self.enabled = enabled
        self.bar = None
        self.writer = None
        if not enabled:
            return
        self.dir = Path(log_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.file = open(self.dir / "metrics.jsonl", "a")
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.dir / "tensorboard"))
        if progress:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial, desc="train", unit="step", dynamic_ncols=True)

    def log(self, record: dict, split: str = "train") -> None:
        if not self.enabled:
            return
        record = {"split": split, **record}
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        step = record["step"]
        if self.writer is not None:
            for key, value in record.items():
                if key not in ("step", "split") and isinstance(value, (int, float)) and math.isfinite(value):
                    self.writer.add_scalar(f"{split}/{key}", value, step)
        line = " ".join(f"{k}={_fmt(v)}" for k, v in record.items() if k != "split")
        if self.bar is not None:
            if split == "train":
                self.bar.update(step - self.bar.n)
                self.bar.set_postfix_str(f"loss={_fmt(record.get('loss'))} lr={_fmt(record.get('lr'))}")
            else:
                self.bar.write(f"[{split}] {line}")
        else:
            print(f"[{split}] {line}", flush=True)

    def message(self, text: str) -> None:
        if not self.enabled:
            return
        (self.bar.write if self.bar is not None else print)(text)

    def close(self) -> None:
        if not self.enabled:
            return
        self.file.close()
        if self.writer is not None:
            self.writer.close()
        if self.bar is not None:
            self.bar.close()


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)
