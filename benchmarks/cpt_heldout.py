"""Held-out Tibetan loss before and after a CPT run, checked outside the training loop.

Reads the run's ``metrics.jsonl`` (train loss, validation loss on FLORES dev as the loop measured it), exports
the run's last checkpoint to HF with ``tools/convert_checkpoint.py export``, and scores the base and the
adapted model with ``megatron_tibetan.evaluation.perplexity`` (transformers, whole documents: perplexity and
bits per byte) on the first N FLORES-200 dev bo lines. Writes OUTPUT.json and OUTPUT.png (loss curves).

    python benchmarks/cpt_heldout.py --run runs/cpt/smollm2-135m --base smollm2 --output runs/bench/cpt_smollm2
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def score(model_dir: str, tokenizer_spec: str, texts: list[str]) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    from megatron_tibetan.evaluation.perplexity import perplexity
    from megatron_tibetan.tokenizer.base import load_tokenizer

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    result = perplexity(model, load_tokenizer(tokenizer_spec), texts, max_length=1024, progress=False)
    return {"perplexity": result.perplexity, "nll_per_token": result.nll / result.tokens,
            "bits_per_byte": result.bits_per_byte, "tokens": result.tokens, "documents": result.documents}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", default="runs/cpt/smollm2-135m", help="the run's logging.dir (metrics.jsonl, checkpoints/)")
    parser.add_argument("--checkpoints", default=None, help="checkpoint.dir (default RUN/checkpoints)")
    parser.add_argument("--base", default="smollm2", help="the base model: HF dir or the preset smollm2")
    parser.add_argument("--flores", default=str(ROOT.parent / "shared/data/eval/flores200.dev.bo"))
    parser.add_argument("--lines", type=int, default=200)
    parser.add_argument("--output", default="runs/bench/cpt_smollm2")
    args = parser.parse_args()

    from megatron_tibetan import presets

    run = Path(args.run)
    rows = [json.loads(line) for line in open(run / "metrics.jsonl")]
    train = [r for r in rows if r["split"] == "train"]
    valid = [r for r in rows if r["split"] == "valid"]
    exported = Path(args.output + "_hf")
    subprocess.run([sys.executable, str(ROOT / "tools/convert_checkpoint.py"), "export", "--megatron",
                    args.checkpoints or str(run / "checkpoints"), "--output", str(exported)], check=True)
    texts = [line.rstrip("\n") for _, line in zip(range(args.lines), open(args.flores, encoding="utf-8"))]
    base_dir = str(presets.smollm2_hf_dir()) if args.base == "smollm2" else args.base
    report = {
        "run": str(run),
        "steps": train[-1]["step"] if train else 0,
        "samples_trained": train[-1]["consumed_samples"] if train else 0,
        "train_loss_first_last": [train[0]["loss"], train[-1]["loss"]] if train else None,
        "loop_validation": [{"step": r["step"], "loss": r["loss"], "ppl": r["ppl"], "tokens": r["tokens"]} for r in valid],
        "train_seconds": sum(r.get("step_time_s", 0.0) for r in train),
        "flores_dev_lines": len(texts),
        "transformers_base": score(base_dir, base_dir, texts),
        "transformers_adapted": score(str(exported), str(exported), texts),
    }
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=1))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([r["step"] for r in train], [r["loss"] for r in train], label="train loss (Nanhai)")
    ax.plot([r["step"] for r in valid], [r["loss"] for r in valid], "o-", label="held-out loss (FLORES dev bo)")
    ax.set_xlabel("step")
    ax.set_ylabel("loss per token")
    ax.legend()
    ax.set_title(f"CPT of {args.base} on Tibetan, CPU")
    fig.tight_layout()
    fig.savefig(out.with_suffix(".png"), dpi=120)
    print(json.dumps({k: v for k, v in report.items() if k != "loop_validation"}, indent=1))
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
