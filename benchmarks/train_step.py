"""Training step time, tokens/s and peak memory on CPU: our megatron-core loop vs a plain ``transformers`` step.

For each config (default: the tiny and SmolLM2 CPT configs) the same model (same HF config; SmolLM2 with the
same weights on both sides), the same batch (the global batch of real Tibetan samples from the config's
dataset, the same micro-batching), the same optimizer (torch AdamW, its fused kernel on both sides) and the
same gradient clipping are timed step by step, alternating the two implementations so that load from other
processes hits both alike. Each step's wall time and process CPU time are recorded: on a shared machine the
CPU seconds are the steadier comparison. The transformers step runs without ``__torch_function__`` handling,
so without ``megatron_tibetan.cpu``'s CUDA-to-CPU mode: a plain step pays nothing for megatron-core. Peak
memory (RSS high-water mark) of each implementation is measured in a child process of its own that runs
``--memory-steps`` steps (in one process the two models would share one peak). ``--profile`` profiles one
more step of each with ``torch.profiler`` and writes the top operators by self CPU time.
Writes OUTPUT.json, OUTPUT.png (and OUTPUT_profile.txt).

    python benchmarks/train_step.py [--configs configs/cpt/tiny-cpu.yaml ...] [--steps 5] [--threads 2]
        [--profile] [--output runs/bench/train_step]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

DEFAULT_CONFIGS = ["configs/cpt/tiny-cpu.yaml", "configs/cpt/smollm2-135m.yaml"]
IMPLEMENTATIONS = ("megatron", "transformers")


def load(path: str, iterations: int):
    from megatron_tibetan.config import load_config

    return load_config(ROOT / path, [
        f"train.iterations={iterations}", "checkpoint.dir=null", "logging.progress=false",
        "logging.tensorboard=false", "logging.dir=runs/bench/train_step_logs", "validation.interval=null",
        "validation.at_start=false", "schedule.warmup_iterations=0",
    ])


def plain_mode():
    """torch without ``__torch_function__`` handling, so without megatron_tibetan.cpu's CUDA-to-CPU mode
    (about 1.5 us per torch call here): a plain process pays nothing for it."""
    import torch

    return torch._C.DisableTorchFunction()


def hf_model(cfg, spec: dict):
    """The same model in transformers: SmolLM2's weights when the run starts from the converted SmolLM2."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from megatron_tibetan import presets

    hf = dict(spec["hf_config"])
    if cfg.checkpoint.load and Path(cfg.checkpoint.load).resolve() == (ROOT / "runs/ckpt/smollm2").resolve():
        return AutoModelForCausalLM.from_pretrained(str(presets.smollm2_hf_dir()), dtype=torch.float32)
    config = AutoConfig.for_model(hf.pop("model_type"), **{k: v for k, v in hf.items() if not k.startswith("_")})
    torch.manual_seed(cfg.train.seed)
    return AutoModelForCausalLM.from_config(config, dtype=torch.float32)


class HFStep:
    """One plain transformers training step over the same micro-batches as ours (mean loss over them)."""

    def __init__(self, cfg, spec: dict, batches, num_microbatches: int):
        import torch

        self.model = hf_model(cfg, spec)
        self.model.train()
        o = cfg.optimizer
        self.clip = o.clip_grad
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=o.lr, betas=(o.adam_beta1, o.adam_beta2),
                                           eps=o.adam_eps, weight_decay=o.weight_decay, fused=True)
        self.batches = batches
        self.num_microbatches = num_microbatches

    def __call__(self) -> float:
        import torch

        micro = [next(self.batches) for _ in range(self.num_microbatches)]
        with plain_mode():
            self.optimizer.zero_grad(set_to_none=True)
            losses = []
            for batch in micro:
                out = self.model(input_ids=batch["tokens"], labels=batch["tokens"])
                (out.loss / len(micro)).backward()
                losses.append(out.loss.item())
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip)
            self.optimizer.step()
        return sum(losses) / len(losses)


def profile_table(step, rows: int) -> str:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows, max_name_column_width=60)


def bench_config(path: str, steps: int, warmup: int, profile_rows: int, batches_file: Path | None, memory_steps: int):
    import torch

    from megatron_tibetan.data.pretraining import MicroBatches
    from megatron_tibetan.training.loop import Trainer

    cfg = load(path, max(steps + warmup + (1 if profile_rows else 0), memory_steps))
    trainer = Trainer(cfg)
    ours_iter = trainer._iterators(trainer.train_data, 0)
    hf = HFStep(cfg, trainer.spec, MicroBatches(trainer.train_data, cfg.batch.micro_batch_size, 0, 1, 0),
                trainer.num_microbatches)
    steps_of = {"megatron": lambda: trainer.train_step(ours_iter)["loss"], "transformers": hf}
    times = {name: [] for name in IMPLEMENTATIONS}
    cpu_times = {name: [] for name in IMPLEMENTATIONS}
    losses = {name: [] for name in IMPLEMENTATIONS}
    for step in range(steps + warmup):
        line = []
        for name in IMPLEMENTATIONS:
            wall, cpu = time.perf_counter(), time.process_time()
            losses[name].append(steps_of[name]())
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            if step >= warmup:
                times[name].append(wall)
                cpu_times[name].append(cpu)
            line.append(f"{name} {wall:.3f} s ({cpu:.2f} CPU-s)")
        print(f"  {Path(path).stem} step {step + 1}/{steps + warmup}: " + ", ".join(line), flush=True)
    profiles = {}
    if batches_file is not None:  # the same batches for the transformers peak-memory child
        batches = MicroBatches(trainer.train_data, cfg.batch.micro_batch_size, 0, 1, 0)
        torch.save({"spec": trainer.spec, "num_microbatches": trainer.num_microbatches,
                    "batches": [next(batches) for _ in range(memory_steps * trainer.num_microbatches)]}, batches_file)
    if profile_rows:
        profiles["megatron"] = profile_table(lambda: trainer.train_step(ours_iter), profile_rows)
        profiles["transformers"] = profile_table(hf, profile_rows)
    trainer.close()
    tokens = cfg.batch.global_batch_size * cfg.data.seq_length
    hf_cfg = trainer.spec["hf_config"]
    result = {
        "config": path,
        "layers": hf_cfg["num_hidden_layers"],
        "hidden": hf_cfg["hidden_size"],
        "global_batch": cfg.batch.global_batch_size,
        "micro_batch": cfg.batch.micro_batch_size,
        "seq_length": cfg.data.seq_length,
        "tokens_per_step": tokens,
        "steps_timed": steps,
    }
    for name in IMPLEMENTATIONS:
        median = statistics.median(times[name])
        result[name] = {"step_time_s": median, "tokens_per_s": tokens / median, "step_times_s": times[name],
                        "cpu_seconds_per_step": statistics.median(cpu_times[name]), "step_cpu_seconds": cpu_times[name],
                        "losses": losses[name]}
    result["megatron_over_transformers_tokens_per_s"] = result["transformers"]["step_time_s"] / result["megatron"]["step_time_s"]
    result["megatron_over_transformers_cpu_seconds"] = (result["transformers"]["cpu_seconds_per_step"]
                                                        / result["megatron"]["cpu_seconds_per_step"])
    # each step of ours against the transformers step right after it (the same load, as far as one can tell)
    result["paired_ratio_median"] = statistics.median(h / m for m, h in zip(times["megatron"], times["transformers"]))
    result["paired_cpu_ratio_median"] = statistics.median(
        h / m for m, h in zip(cpu_times["megatron"], cpu_times["transformers"]))
    return result, profiles


def peak_rss_child(path: str, implementation: str, steps: int, batches_file: str) -> None:
    """Child process: one implementation alone runs ``steps`` steps; prints its peak RSS as JSON. The
    transformers side reads the same micro-batches from ``batches_file`` and imports no megatron-core."""
    if implementation == "megatron":
        from megatron_tibetan.training.loop import Trainer

        trainer = Trainer(load(path, steps))
        iterator = trainer._iterators(trainer.train_data, 0)
        for _ in range(steps):
            trainer.train_step(iterator)
    else:
        import torch

        saved = torch.load(batches_file)
        step = HFStep(load(path, steps), saved["spec"], iter(saved["batches"]), saved["num_microbatches"])
        for _ in range(steps):
            step()
    print(json.dumps({"peak_rss_mib": peak_rss_of_this_process()}))


def peak_rss_of_this_process() -> float:
    """MiB. Linux's VmHWM belongs to this program; getrusage's maxrss would include the parent's before exec."""
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def peak_rss(path: str, implementation: str, steps: int, threads: int, batches_file: Path) -> float:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONWARNINGS="ignore")
    out = subprocess.run([sys.executable, __file__, "--memory-child", path, implementation, str(steps),
                          str(batches_file), "--threads", str(threads)], env=env, capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(f"peak-memory run of {implementation} on {path} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])["peak_rss_mib"]


def plot(results: list, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [Path(r["config"]).stem for r in results]
    x = range(len(results))
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for ax, key, label in ((axes[0], "tokens_per_s", "tokens / s"), (axes[1], "peak_rss_mib", "peak RSS (MiB)")):
        for offset, name, title in ((-0.2, "megatron", "megatron-core loop"), (0.2, "transformers", "transformers step")):
            values = [r[name].get(key, 0.0) for r in results]
            ax.bar([i + offset for i in x], values, 0.4, label=title)
        ax.set_xticks(list(x), names)
        ax.set_ylabel(label)
    axes[0].set_yscale("log")
    axes[0].set_title("training throughput (CPU), same model and batch", fontsize=9)
    axes[1].set_title("peak memory, one implementation per process", fontsize=9)
    axes[0].legend(fontsize=8)
    for i, r in enumerate(results):
        axes[0].annotate(f"{r['megatron_over_transformers_tokens_per_s']:.2f}x", (i, r["megatron"]["tokens_per_s"]),
                         ha="center", va="bottom", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--configs", nargs="+", default=DEFAULT_CONFIGS)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per implementation")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)), help="torch intra-op threads")
    parser.add_argument("--memory-steps", type=int, default=2, help="steps of each peak-memory child (0: skip)")
    parser.add_argument("--profile", action="store_true", help="profile one step of each implementation")
    parser.add_argument("--profile-rows", type=int, default=25)
    parser.add_argument("--output", default="runs/bench/train_step", help="writes OUTPUT.json and OUTPUT.png")
    parser.add_argument("--memory-child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    if args.memory_child:
        config, implementation, steps, batches_file = args.memory_child
        peak_rss_child(config, implementation, int(steps), batches_file)
        return
    results, profiles = [], {}
    for config in args.configs:
        print(f"{config}: alternating {args.warmup} + {args.steps} steps", flush=True)
        batches_file = Path(f"{args.output}_batches.pt") if args.memory_steps else None
        if batches_file:
            batches_file.parent.mkdir(parents=True, exist_ok=True)
        result, profiles[config] = bench_config(config, args.steps, args.warmup, args.profile_rows if args.profile else 0,
                                                batches_file, args.memory_steps)
        if batches_file:
            for name in IMPLEMENTATIONS:
                print(f"{config}: peak memory of {name} ({args.memory_steps} steps in a child process)", flush=True)
                result[name]["peak_rss_mib"] = peak_rss(config, name, args.memory_steps, args.threads, batches_file)
            batches_file.unlink()
        results.append(result)
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    load_avg = os.getloadavg()
    report = {"device": "cpu", "threads": args.threads, "cpus": len(os.sched_getaffinity(0)),
              "omp_env": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT")},
              "load_average_at_end": load_avg, "torch": torch.__version__, "results": results}
    out.with_suffix(".json").write_text(json.dumps(report, indent=1))
    plot(results, out.with_suffix(".png"))
    if args.profile:
        text = [f"{config} :: {name}\n{table}" for config, tables in profiles.items() for name, table in tables.items()]
        Path(f"{out}_profile.txt").write_text("\n\n".join(text))
    for r in results:
        mem = "".join(f"; peak RSS {n} {r[n]['peak_rss_mib']:.0f} MiB" for n in IMPLEMENTATIONS if "peak_rss_mib" in r[n])
        print(f"{r['config']}: megatron {r['megatron']['step_time_s']:.3f} s/step {r['megatron']['tokens_per_s']:.0f} tok/s; "
              f"transformers {r['transformers']['step_time_s']:.3f} s/step {r['transformers']['tokens_per_s']:.0f} tok/s; "
              f"ratio {r['megatron_over_transformers_tokens_per_s']:.2f} (CPU-seconds "
              f"{r['megatron']['cpu_seconds_per_step']:.2f} vs {r['transformers']['cpu_seconds_per_step']:.2f}, "
              f"ratio {r['megatron_over_transformers_cpu_seconds']:.2f}); paired step ratios: median "
              f"{r['paired_ratio_median']:.2f} (CPU {r['paired_cpu_ratio_median']:.2f}){mem}")
    print(f"load average {load_avg[0]:.1f} {load_avg[1]:.1f} {load_avg[2]:.1f}; wrote {out.with_suffix('.json')} "
          f"and {out.with_suffix('.png')}" + (f" and {out}_profile.txt" if args.profile else ""))


if __name__ == "__main__":
    main()
