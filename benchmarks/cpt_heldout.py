"""Held-out Tibetan loss after CPT runs, checked outside the training loop; several runs compare side by side.

For each run (``--run [NAME=]DIR``, a run's ``logging.dir``) it reads ``metrics.jsonl`` (train loss, validation
loss on FLORES dev as the loop measured it, step times), exports the run's last checkpoint to HF with
``tools/convert_checkpoint.py export``, and scores it, and the base model once, with
``megatron_tibetan.evaluation.perplexity`` (transformers, whole documents: perplexity and bits per byte) on
the first N FLORES-200 dev bo lines. Writes OUTPUT.json and OUTPUT.png (loss curves of every run).

    python benchmarks/cpt_heldout.py --run runs/cpt/smollm2-135m --base smollm2 --output runs/bench/cpt_smollm2
    python benchmarks/cpt_heldout.py --run before=runs/cpt/a --run after=runs/cpt/b --output runs/bench/cpt_compare
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def score(model_dir: str, tokenizer_spec: str, texts: list[str]) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    from megatron_tibetan.evaluation.perplexity import perplexity
    from megatron_tibetan.tokenizer.base import load_tokenizer

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    result = perplexity(model, load_tokenizer(tokenizer_spec), texts, max_length=1024, progress=False)
    return {"perplexity": result.perplexity, "nll_per_token": result.nll / result.tokens,
            "bits_per_byte": result.bits_per_byte, "tokens": result.tokens, "documents": result.documents}


def run_report(run: Path, checkpoints: Path, output: str, name: str, tokenizer_texts: list[str]) -> dict:
    """What the loop logged for one run, and its exported checkpoint scored by transformers."""
    rows = [json.loads(line) for line in open(run / "metrics.jsonl")]
    train = [r for r in rows if r["split"] == "train"]
    valid = [r for r in rows if r["split"] == "valid"]
    exported = Path(f"{output}_{name}_hf")
    subprocess.run([sys.executable, str(ROOT / "tools/convert_checkpoint.py"), "export", "--megatron",
                    str(checkpoints), "--output", str(exported)], check=True)
    step_times = [r["step_time_s"] for r in train if "step_time_s" in r]
    return {
        "run": str(run),
        "steps": train[-1]["step"] if train else 0,
        "samples_trained": train[-1]["consumed_samples"] if train else 0,
        "train_loss_first_last": [train[0]["loss"], train[-1]["loss"]] if train else None,
        "train_losses": [r["loss"] for r in train],
        "step_times_s": step_times,
        "loop_validation": [{"step": r["step"], "loss": r["loss"], "ppl": r["ppl"], "tokens": r["tokens"]} for r in valid],
        "train_seconds": sum(step_times),
        "median_step_seconds": statistics.median(step_times) if step_times else None,
        "transformers_adapted": score(str(exported), str(exported), tokenizer_texts),
    }


def plot(report: dict, path: Path, base: str) -> None:
    """Loss against step and against training time (the loop's step times), one colour per run."""
    import itertools

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
    for name, r in report["runs"].items():
        steps = range(1, len(r["train_losses"]) + 1)
        seconds = list(itertools.accumulate(r["step_times_s"]))
        valid = r["loop_validation"]
        line, = axes[0].plot(steps, r["train_losses"], label=f"{name}: train loss (Nanhai)")
        axes[0].plot([v["step"] for v in valid], [v["loss"] for v in valid], "o--", color=line.get_color(),
                     label=f"{name}: held-out loss (FLORES dev bo)")
        if len(seconds) == len(r["train_losses"]):
            axes[1].plot(seconds, r["train_losses"], color=line.get_color(), label=f"{name}: train loss")
            at = [0.0] + seconds
            axes[1].plot([at[v["step"]] for v in valid if v["step"] < len(at)],
                         [v["loss"] for v in valid if v["step"] < len(at)], "o--", color=line.get_color(),
                         label=f"{name}: held-out loss")
    axes[0].set_xlabel("step")
    axes[1].set_xlabel("training seconds (sum of the loop's step times)")
    axes[0].set_ylabel("loss per token")
    axes[0].legend(fontsize=7)
    axes[1].legend(fontsize=7)
    fig.suptitle(f"CPT of {base} on Tibetan, CPU", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", action="append", default=None,
                        help="[NAME=]DIR: a run's logging.dir (metrics.jsonl; checkpoints in DIR/checkpoints); repeatable")
    parser.add_argument("--checkpoints", default=None, help="checkpoint.dir of a single run (default RUN/checkpoints)")
    parser.add_argument("--base", default="smollm2", help="the base model: HF dir or the preset smollm2")
    parser.add_argument("--flores", default=str(ROOT.parent / "shared/data/eval/flores200.dev.bo"))
    parser.add_argument("--lines", type=int, default=200)
    parser.add_argument("--output", default="runs/bench/cpt_smollm2")
    args = parser.parse_args()
    runs = args.run or ["runs/cpt/smollm2-135m"]
    named = [r.split("=", 1) if "=" in r else [Path(r).name, r] for r in runs]
    if args.checkpoints and len(named) > 1:
        parser.error("--checkpoints names the checkpoint folder of a single --run")
    for _, directory in named:
        if not (Path(directory) / "metrics.jsonl").is_file():
            parser.error(f"{directory}: no metrics.jsonl (is it a run's logging.dir?)")

    from megatron_tibetan import presets

    texts = [line.rstrip("\n") for _, line in zip(range(args.lines), open(args.flores, encoding="utf-8"))]
    base_dir = str(presets.smollm2_hf_dir()) if args.base == "smollm2" else args.base
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    report = {"flores_dev_lines": len(texts), "transformers_base": score(base_dir, base_dir, texts), "runs": {}}
    for name, directory in named:
        run = Path(directory)
        checkpoints = Path(args.checkpoints) if args.checkpoints else run / "checkpoints"
        report["runs"][name] = run_report(run, checkpoints, args.output, name, texts)
    out.with_suffix(".json").write_text(json.dumps(report, indent=1))

    plot(report, out.with_suffix(".png"), args.base)
    for name, r in report["runs"].items():
        valid = ", ".join(f"step {v['step']}: {v['loss']:.4f}" for v in r["loop_validation"])
        print(f"{name}: {r['steps']} steps in {r['train_seconds']:.0f} s (median step {r['median_step_seconds']:.1f} s); "
              f"held-out loss in the loop {valid}; transformers on {len(texts)} FLORES dev lines: "
              f"{r['transformers_adapted']['nll_per_token']:.4f} per token (base {report['transformers_base']['nll_per_token']:.4f})")
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
