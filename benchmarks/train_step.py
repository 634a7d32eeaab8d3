"""Training step time and tokens/s on CPU: our megatron-core loop vs a plain ``transformers`` step, same run.

For each config (default: the tiny and SmolLM2 CPT configs) the same model (same HF config; SmolLM2 with the
same weights on both sides), the same batch (global batch of real Tibetan samples from the config's dataset,
the same micro-batching) and the same optimizer (AdamW, clipping) are timed step by step, alternating the two
implementations so that load from other processes hits both alike. Writes JSON and a PNG.

    python benchmarks/train_step.py [--configs configs/cpt/tiny-cpu.yaml ...] [--steps 5] [--output runs/bench/train_step]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DEFAULT_CONFIGS = ["configs/cpt/tiny-cpu.yaml", "configs/cpt/smollm2-135m.yaml"]


def hf_model(trainer):
    """The same model in transformers: SmolLM2's weights when the run starts from the converted SmolLM2."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from megatron_tibetan import presets

    hf = dict(trainer.spec["hf_config"])
    if trainer.cfg.checkpoint.load and Path(trainer.cfg.checkpoint.load).resolve() == (ROOT / "runs/ckpt/smollm2").resolve():
        return AutoModelForCausalLM.from_pretrained(str(presets.smollm2_hf_dir()), dtype=torch.float32)
    config = AutoConfig.for_model(hf.pop("model_type"), **{k: v for k, v in hf.items() if not k.startswith("_")})
    torch.manual_seed(trainer.cfg.train.seed)
    return AutoModelForCausalLM.from_config(config, dtype=torch.float32)


def hf_step(model, optimizer, micro_batches, clip: float) -> float:
    """One transformers training step over the same micro-batches; returns the mean loss."""
    import torch

    optimizer.zero_grad(set_to_none=True)
    losses = []
    for batch in micro_batches:
        out = model(input_ids=batch["tokens"], labels=batch["tokens"])
        (out.loss / len(micro_batches)).backward()
        losses.append(out.loss.item())
    torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    optimizer.step()
    return sum(losses) / len(losses)


def bench_config(path: str, steps: int, warmup: int) -> dict:
    import torch

    from megatron_tibetan.config import load_config
    from megatron_tibetan.data.gpt import MicroBatches
    from megatron_tibetan.training.loop import Trainer

    cfg = load_config(ROOT / path, [
        f"train.iterations={steps + warmup}", "checkpoint.dir=null", "logging.progress=false",
        "logging.tensorboard=false", "logging.dir=runs/bench/train_step_logs", "validation.interval=null",
        "validation.at_start=false", "schedule.warmup_iterations=0",
    ])
    trainer = Trainer(cfg)
    model = hf_model(trainer)
    model.train()
    o = cfg.optimizer
    hf_opt = torch.optim.AdamW(model.parameters(), lr=o.lr, betas=(o.adam_beta1, o.adam_beta2), eps=o.adam_eps,
                               weight_decay=o.weight_decay)
    ours_iter = trainer._iterators(trainer.train_data, 0)
    hf_batches = MicroBatches(trainer.train_data, cfg.batch.micro_batch_size, 0, 1, 0)
    ours, theirs = [], []
    for step in range(steps + warmup):
        t0 = time.perf_counter()
        trainer.train_step(ours_iter)
        t1 = time.perf_counter()
        hf_step(model, hf_opt, [next(hf_batches) for _ in range(trainer.num_microbatches)], o.clip_grad)
        t2 = time.perf_counter()
        if step >= warmup:
            ours.append(t1 - t0)
            theirs.append(t2 - t1)
    trainer.close()
    tokens = cfg.batch.global_batch_size * cfg.data.seq_length
    m, h = statistics.median(ours), statistics.median(theirs)
    return {
        "config": path,
        "layers": trainer.spec["hf_config"]["num_hidden_layers"],
        "hidden": trainer.spec["hf_config"]["hidden_size"],
        "global_batch": cfg.batch.global_batch_size,
        "micro_batch": cfg.batch.micro_batch_size,
        "seq_length": cfg.data.seq_length,
        "tokens_per_step": tokens,
        "steps_timed": steps,
        "megatron": {"step_time_s": m, "tokens_per_s": tokens / m, "step_times_s": ours},
        "transformers": {"step_time_s": h, "tokens_per_s": tokens / h, "step_times_s": theirs},
        "megatron_over_transformers_tokens_per_s": h / m,
    }


def plot(results: list, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [Path(r["config"]).stem for r in results]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    x = range(len(results))
    ax.bar([i - 0.2 for i in x], [r["megatron"]["tokens_per_s"] for r in results], 0.4, label="megatron-core loop")
    ax.bar([i + 0.2 for i in x], [r["transformers"]["tokens_per_s"] for r in results], 0.4, label="transformers step")
    ax.set_xticks(list(x), names)
    ax.set_ylabel("tokens / s (CPU)")
    ax.set_yscale("log")
    ax.legend()
    ax.set_title("Training throughput, same model and batch")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--configs", nargs="+", default=DEFAULT_CONFIGS)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per implementation")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", default="runs/bench/train_step", help="writes OUTPUT.json and OUTPUT.png")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    results = [bench_config(c, args.steps, args.warmup) for c in args.configs]
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    report = {"device": "cpu", "threads": args.threads, "torch": torch.__version__, "results": results}
    out.with_suffix(".json").write_text(json.dumps(report, indent=1))
    plot(results, out.with_suffix(".png"))
    for r in results:
        print(f"{r['config']}: megatron {r['megatron']['step_time_s']:.3f} s/step {r['megatron']['tokens_per_s']:.0f} tok/s; "
              f"transformers {r['transformers']['step_time_s']:.3f} s/step {r['transformers']['tokens_per_s']:.0f} tok/s; "
              f"ratio {r['megatron_over_transformers_tokens_per_s']:.2f}")
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
