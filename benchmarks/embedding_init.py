"""How well does each initialisation of the new embedding rows start? Bits per byte of SmolLM2-135M on
FLORES-200 dev bo before any training: the base tokenizer, and an extended tokenizer with the new rows
set by "mean" (mean of all rows) or "subtoken_mean" (mean of the base encoding of the token's text).
Bits per byte compare tokenizers fairly. Writes embedding_init.json and embedding_init.png.

    python benchmarks/embedding_init.py --tokenizer runs/fertility_sweep/smollm2-run-bo32k --lines 100
"""

import argparse
import json
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

import torch  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402

from megatron_tibetan import presets  # noqa: E402
from megatron_tibetan.evaluation.perplexity import perplexity  # noqa: E402
from megatron_tibetan.tokenizer import load_tokenizer  # noqa: E402
from megatron_tibetan.tokenizer.embeddings import init_new_embeddings  # noqa: E402
from megatron_tibetan.tokenizer.extension_file import load_extension  # noqa: E402

DATA = ROOT.parent / "shared" / "data"


def with_new_rows(model_dir: Path, base, extended, method: str):
    """The model with its (tied) embedding resized for ``extended`` and the new rows set by ``method``."""
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    if not model.config.tie_word_embeddings:
        raise ValueError(f"{model_dir}: this benchmark expects tied embeddings (SmolLM2)")
    weight = init_new_embeddings(base, extended, model.get_input_embeddings().weight.detach(), method)
    model.resize_token_embeddings(weight.shape[0], mean_resizing=False)
    with torch.no_grad():
        model.get_input_embeddings().weight.copy_(weight)
    return model


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokenizer", required=True, help="an extended tokenizer directory of the smollm2 base")
    p.add_argument("--lines", type=int, default=100, help="first lines of FLORES-200 dev bo to score")
    p.add_argument("--output", default=str(ROOT / "runs" / "embedding_init"))
    args = p.parse_args()
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    if load_extension(args.tokenizer)["base"] != "smollm2":
        raise ValueError(f"{args.tokenizer}: extension of {load_extension(args.tokenizer)['base']}, expected smollm2")
    texts = (DATA / "eval" / "flores200.dev.bo").read_text().splitlines()[: args.lines]
    model_dir = presets.smollm2_hf_dir()
    base, extended = load_tokenizer("smollm2"), load_tokenizer(args.tokenizer)

    results = {}
    runs = [("base tokenizer", lambda: AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32), base)]
    runs += [(f"extended, {m}", lambda m=m: with_new_rows(model_dir, base, extended, m), extended)
             for m in ("mean", "subtoken_mean")]
    for name, build, tok in runs:
        start = time.perf_counter()
        r = perplexity(build(), tok, texts, max_length=1024).as_dict()
        results[name] = {**r, "seconds": round(time.perf_counter() - start, 1)}
        print(f"{name:<24} {r['tokens']:>7} tokens  {r['bits_per_byte']:.3f} bits/byte  "
              f"{r['nll_per_token']:.2f} nats/token", flush=True)
    (out / "embedding_init.json").write_text(json.dumps(
        {"tokenizer": args.tokenizer, "lines": args.lines, "results": results}, indent=2) + "\n")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    names = list(results)
    bars = ax.bar(names, [results[n]["bits_per_byte"] for n in names], color=["grey", "tab:orange", "tab:blue"])
    ax.bar_label(bars, fmt="%.3f")
    ax.set_ylabel("bits per byte (lower is better)")
    ax.set_title(f"SmolLM2-135M before training, FLORES-200 dev bo ({args.lines} lines)")
    fig.tight_layout()
    fig.savefig(out / "embedding_init.png", dpi=120)
    print(f"wrote {out / 'embedding_init.json'} and {out / 'embedding_init.png'}")


if __name__ == "__main__":
    main()
