"""Fertility against the number of new Tibetan tokens (4k, 8k, 16k, 32k) for Qwen2.5 and SmolLM2 (byte-level
BPE; syllable and run pre-tokens) and for a SentencePiece base (BPE or unigram Tibetan pieces).

Byte-level BPE bases and SentencePiece BPE pieces are trained once at the largest size (a smaller budget
is a prefix of a larger one); unigram pieces are trained at each size. Each size is saved as a tokenizer
directory and measured on FLORES-200 dev against the base tokenizer in the same run. Writes
fertility_sweep.json and fertility_sweep.png.

The SentencePiece base ``llama2-like`` is a stand-in for Llama 2's tokenizer (none is available offline):
SentencePiece BPE with Llama 2's settings and byte fallback, 32,000 pieces trained here on the English and
Chinese sides of the parallel files; any other SentencePiece model or HF directory holding one works too.

    python benchmarks/fertility_sweep.py --output runs/fertility_sweep
    python benchmarks/fertility_sweep.py --bases llama2-like --piece-types bpe unigram
"""

import argparse
import json
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

from megatron_tibetan.text import normalize  # noqa: E402
from megatron_tibetan.text.readers import iter_texts  # noqa: E402
from megatron_tibetan.tokenizer import load_tokenizer  # noqa: E402
from megatron_tibetan.tokenizer.base import SENTENCEPIECE, base_kind  # noqa: E402
from megatron_tibetan.tokenizer.bpe_extend import learn_extension, save_extended, truncate_merges  # noqa: E402
from megatron_tibetan.tokenizer.fertility import fertility  # noqa: E402
from megatron_tibetan.tokenizer.sentencepiece_extend import (  # noqa: E402
    learn_sentencepiece_extension, save_extended_sentencepiece, select_new_pieces,
)
from megatron_tibetan.tokenizer.sentencepiece_model import train_llama2_like  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
LANGS = ("bo", "zh", "en")
LLAMA2_LIKE = "llama2-like"
# English and Chinese sides of the parallel files (never FLORES)
LLAMA2_LIKE_TEXT = ("openpecha.bo-en.en.xz", "84000.bo-en.en.xz", "ntrex128.en.xz", "openpecha.bo-zh.zh.xz",
                    "ntrex128.zh.xz")


def llama2_like_base(data: Path, out: Path, vocab_size: int = 32000) -> str:
    """The stand-in Llama-2 tokenizer (trained once, then reused from ``out``)."""
    path = out / f"{LLAMA2_LIKE}-enzh" / "tokenizer.model"
    if not path.is_file():
        lines = (normalize(x) for name in LLAMA2_LIKE_TEXT for x in iter_texts([data / "parallel" / name]))
        start = time.perf_counter()
        proto = train_llama2_like((x for x in lines if x), path, vocab_size)
        print(f"[sweep] {path}: {len(proto.pieces)} pieces in {time.perf_counter() - start:.0f} s")
    return str(path)


def measure(tokenizer, data: Path) -> dict:
    return {lang: fertility(tokenizer, data / "eval" / f"flores200.dev.{lang}") for lang in LANGS}


def sweep_sentencepiece(base_spec: str, name: str, piece_type: str, sizes: list[int], corpus: list[str],
                        max_lines: list, data: Path, out: Path) -> dict:
    result = {"base": name, "base_spec": base_spec, "unit": f"sp-{piece_type}", "piece_type": piece_type,
              "training": {}, "sizes": {}}
    learned = None
    for n in sizes:
        if learned is None or piece_type == "unigram":  # unigram pieces of a smaller size are no prefix
            learned = learn_sentencepiece_extension(base_spec, corpus, max(sizes) if piece_type == "bpe" else n,
                                                    max_lines, piece_type)
            result["training"][max(sizes) if piece_type == "bpe" else n] = learned[3]
        base, base_proto, tibetan, info = learned
        result.setdefault("base_fertility", measure(base, data))
        pieces, selection = select_new_pieces(base_proto, tibetan, n)
        directory = out / f"{name}-sp-{piece_type}-bo{n // 1000}k"
        extension = save_extended_sentencepiece(base, base_spec, base_proto, pieces, directory,
                                                {**info, "selection": selection})
        result["sizes"][n] = {"directory": str(directory), "num_new_tokens": extension["num_new_tokens"],
                              "selection": selection, "fertility": measure(load_tokenizer(directory), data)}
    return result


def sweep(base_spec: str, unit: str, sizes: list[int], corpus: list[str], max_lines: list, data: Path,
          out: Path) -> dict:
    base, merges, info = learn_extension(base_spec, corpus, max(sizes), max_lines, unit=unit)
    result = {"base": base_spec, "unit": unit, "training": info, "base_fertility": measure(base, data), "sizes": {}}
    for n in sizes:
        directory = out / f"{base_spec}-{unit}-bo{n // 1000}k"
        extension = save_extended(base, base_spec, truncate_merges(merges, base, n), directory, info)
        result["sizes"][n] = {"directory": str(directory), "num_new_tokens": extension["num_new_tokens"],
                              "fertility": measure(load_tokenizer(directory), data)}
    return result


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for k, r in enumerate(results):
        points = sorted({(s["num_new_tokens"], s["fertility"]["bo"]["tokens_per_syllable"]) for s in r["sizes"].values()})
        base = r["base_fertility"]["bo"]["tokens_per_syllable"]
        style = {"run": "-", "syllable": ":", "sp-bpe": "-.", "sp-unigram": "--"}[r["unit"]]
        kind = f"SentencePiece {r['piece_type']} pieces" if "piece_type" in r else f"{r['unit']} pre-tokens"
        line, = ax.plot(*zip(*points), marker="o", ls=style, label=f"{r['base']}, {kind} (base: {base:.2f})")
        for n, v in points:
            ax.annotate(f"{v:.2f}", (n, v), textcoords="offset points", xytext=(0, -12 if k == 2 else 7),
                        ha="center", fontsize=7, color=line.get_color())
    ax.axhline(1.2, color="grey", ls="--", lw=1, label="target 1.2")
    ax.set_xscale("log", base=2)
    ax.set_xticks([4000, 8000, 16000, 32000], ["4k", "8k", "16k", "32k"])
    ax.set_xlabel("new Tibetan tokens (actual; syllable pre-tokens run out of distinct syllables)")
    ax.set_ylabel("tokens per syllable, FLORES-200 dev bo")
    ax.set_title("Tibetan fertility vs. vocabulary extension (base value in the legend)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", default=str(ROOT / "runs" / "fertility_sweep"))
    p.add_argument("--bases", nargs="+", default=["qwen2.5", "smollm2", LLAMA2_LIKE],
                   help=f"byte-level BPE or SentencePiece tokenizers; {LLAMA2_LIKE}: the stand-in trained here")
    p.add_argument("--units", nargs="+", default=["syllable", "run"], help="byte-level BPE bases")
    p.add_argument("--piece-types", nargs="+", default=["bpe", "unigram"], help="SentencePiece bases")
    p.add_argument("--sizes", nargs="+", type=int, default=[4000, 8000, 16000, 32000])
    p.add_argument("--corpus", nargs="+", default=[str(DATA / "mono" / "nanhai.bo.txt.xz"),
                                                   str(DATA / "mono" / "kangyur.bo.txt.xz")])
    p.add_argument("--max-lines-per-file", nargs="+", default=["all", "20000"],
                   help="one value per corpus file ('all': no limit); default: all of nanhai, 20,000 kangyur lines")
    p.add_argument("--data", default=str(DATA), help="the shared data folder (FLORES-200 dev in eval/)")
    p.add_argument("--plot-only", action="store_true", help="redraw the PNG from an existing JSON")
    args = p.parse_args()
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    if args.plot_only:
        return plot(json.loads((out / "fertility_sweep.json").read_text()), out / "fertility_sweep.png")
    limits = [None if v == "all" else int(v) for v in args.max_lines_per_file]
    results = []
    for name in args.bases:
        spec = llama2_like_base(Path(args.data), out) if name == LLAMA2_LIKE else name
        if base_kind(spec) == SENTENCEPIECE:
            results += [sweep_sentencepiece(spec, name, t, args.sizes, args.corpus, limits, Path(args.data), out)
                        for t in args.piece_types]
        else:
            results += [sweep(spec, u, args.sizes, args.corpus, limits, Path(args.data), out) for u in args.units]
    (out / "fertility_sweep.json").write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    plot(results, out / "fertility_sweep.png")

    print(f"{'tokenizer':<26}{'new':>7}{'bo tok/syl':>11}{'bo B/tok':>10}{'zh tok/char':>12}{'en tok/word':>12}"
          f"{'zh Δ%':>8}{'en Δ%':>8}")
    for r in results:
        b = r["base_fertility"]
        rows = [(r["base"], 0, b)] + [(f"{r['base']}+{r['unit']}{n // 1000}k", s["num_new_tokens"], s["fertility"])
                                      for n, s in r["sizes"].items()]
        for name, new, f in rows:
            dz = 100 * (f["zh"]["tokens"] / b["zh"]["tokens"] - 1)
            de = 100 * (f["en"]["tokens"] / b["en"]["tokens"] - 1)
            print(f"{name:<26}{new:>7}{f['bo']['tokens_per_syllable']:>11.3f}{f['bo']['bytes_per_token']:>10.2f}"
                  f"{f['zh']['tokens_per_char']:>12.3f}{f['en']['tokens_per_word']:>12.3f}{dz:>8.2f}{de:>8.2f}")
        if r["unit"].startswith("sp-"):
            for n, t in r["training"].items():
                print(f"  training ({r['base']}, {r['unit']}, {n} pieces asked): {t['seconds_training']} s, "
                      f"peak RSS {t['peak_rss_mib']} MiB (process so far)")
            for n, s in r["sizes"].items():
                print(f"  {n}: {s['selection']}, FLORES dev bo byte-fallback tokens "
                      f"{s['fertility']['bo']['byte_fallback_tokens']} in {s['fertility']['bo']['byte_fallback_lines']} lines")
            continue
        t = r["training"]
        print(f"  training ({r['base']}, {r['unit']}, {max(args.sizes)} tokens): {t['seconds_counting']} s counting, "
              f"{t['seconds_training']} s BPE, peak RSS {t['peak_rss_mib']} MiB (process so far)")
    print(f"wrote {out / 'fertility_sweep.json'} and {out / 'fertility_sweep.png'}")


if __name__ == "__main__":
    main()
