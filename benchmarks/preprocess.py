"""Preprocessing throughput against a baseline measured in the same run.

    python benchmarks/preprocess.py --megatron-lm /work/baseline/preprocess_data.py [--mb 100] [--workers 1 2]

The input is the first ``--mb`` MB of ``--corpus`` (Kangyur by default) written once as .jsonl, the
format Megatron-LM's tool reads. For each worker count the baseline and tools/preprocess_data.py run as
separate processes on the same file and tokenizer (SmolLM2 by default); ours runs with normalisation
and filters off so that its output must be token-identical to the baseline's (checked through
megatron-core's IndexedDataset, and byte for byte). One more run shows the full pipeline (normalise,
filter, deduplicate), and one on a quarter of the input shows that peak memory does not grow with it.

Baseline: with ``--megatron-lm PATH`` Megatron-LM's own tools/preprocess_data.py, run through
a runner kept outside this repository (``--megatron-shim``, default ``run_megatron_preprocess.py`` beside
it): megatron-core 0.16.1 lacks megatron.training and megatron.core.tokenizers.utils, which the script
imports, so the runner registers those two modules (tokenizer flags; megatron-core's own
HuggingFaceTokenizer through MegatronTokenizer.from_pretrained) and runs the script unmodified. Without it: the plain
sequential loop (one transformers call per document, one IndexedDatasetBuilder.add_document each).

Measured per run: wall seconds (start-up included), MB/s and documents/s, CPU seconds of the whole
process tree, and peak memory (sum of PSS over the process tree, sampled every 0.2 s). Writes
<out>/preprocess.json and <out>/preprocess.png.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import lzma
import os
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def make_input(corpus: Path, mb: float, path: Path) -> dict:
    """The first lines of ``corpus`` totalling at least ``mb`` MB of UTF-8 text, as {"text": ...} JSON lines."""
    docs = size = 0
    with lzma.open(corpus, "rt", encoding="utf-8") if corpus.suffix == ".xz" else open(corpus, encoding="utf-8") as f, \
            open(path, "w", encoding="utf-8") as out:
        for line in f:
            text = line.rstrip("\n")
            out.write(json.dumps({"text": text}, ensure_ascii=False) + "\n")
            docs += 1
            size += len(text.encode("utf-8"))
            if size >= mb * 1e6:
                break
    return {"documents": docs, "text_bytes": size, "file_bytes": path.stat().st_size}


def _tree_pss(proc) -> int:
    import psutil

    total = 0
    for p in [proc] + proc.children(recursive=True):
        try:
            total += p.memory_full_info().pss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return total


def measure(cmd: list[str], log: Path) -> dict:
    """Run ``cmd``; wall seconds, CPU seconds of the process tree, peak PSS of the tree (MB)."""
    import psutil

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    with open(log, "w") as out:
        popen = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
        proc, peak, done = psutil.Process(popen.pid), [0], threading.Event()

        def sample():
            while not done.wait(0.2):
                peak[0] = max(peak[0], _tree_pss(proc))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        rc = popen.wait()
        done.set()
        sampler.join()
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if rc != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd))} failed (exit {rc}); see {log}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"seconds": round(seconds, 2), "cpu_seconds": round(cpu, 2), "peak_pss_mb": round(peak[0] / 2**20, 1)}


def sequential_baseline(input_path: str, prefix: str, tokenizer_spec: str) -> None:
    """The plain loop: one transformers call per document, eod appended, one add_document each."""
    import numpy as np
    from megatron.core.datasets.indexed_dataset import DType, IndexedDatasetBuilder

    from megatron_tibetan.tokenizer.base import load_tokenizer

    tok = load_tokenizer(tokenizer_spec)
    builder = IndexedDatasetBuilder(prefix + ".bin", dtype=DType.optimal_dtype(len(tok)))
    with open(input_path, encoding="utf-8") as f:
        for line in f:
            ids = tok(json.loads(line)["text"]).input_ids + [tok.eos_token_id]
            builder.add_document(np.array(ids), [len(ids)])
    builder.finalize(prefix + ".idx")


def file_digest(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def same_tokens(prefix_a: str, prefix_b: str) -> dict:
    """Compare two datasets through megatron-core's IndexedDataset (documents and every token)."""
    import numpy as np
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    a, b = IndexedDataset(prefix_a), IndexedDataset(prefix_b)
    same = len(a) == len(b) and np.array_equal(a.document_indices, b.document_indices) and \
        np.array_equal(a.sequence_lengths, b.sequence_lengths) and \
        all(np.array_equal(a[i], b[i]) for i in range(len(a)))
    files = all(file_digest(prefix_a + s) == file_digest(prefix_b + s) for s in (".bin", ".idx"))
    return {"tokens_identical": bool(same), "files_identical": files, "documents": len(a),
            "tokens": int(a.sequence_lengths.sum())}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--megatron-lm", help="path to Megatron-LM's tools/preprocess_data.py (else the sequential loop)")
    p.add_argument("--megatron-shim", help="runner that supplies what the script imports from megatron.training "
                   "(default: run_megatron_preprocess.py beside --megatron-lm)")
    p.add_argument("--corpus", default=str(ROOT.parent / "shared" / "data" / "mono" / "kangyur.bo.txt.xz"))
    p.add_argument("--mb", type=float, default=100.0, help="MB of corpus text to process")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--tokenizer", default="smollm2")
    p.add_argument("--out", default=str(ROOT / "out" / "bench_preprocess"))
    p.add_argument("--sequential-baseline", nargs=3, metavar=("INPUT", "PREFIX", "TOKENIZER"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.sequential_baseline:
        return sequential_baseline(*args.sequential_baseline)

    import warnings

    warnings.filterwarnings("ignore")
    from megatron_tibetan.tokenizer.base import resolve_tokenizer_dir

    shim = args.megatron_shim or (args.megatron_lm and str(Path(args.megatron_lm).parent / "run_megatron_preprocess.py"))
    if args.megatron_lm and not (Path(args.megatron_lm).is_file() and Path(shim).is_file()):
        sys.exit(f"--megatron-lm {args.megatron_lm} and its runner {shim} must both exist")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = out / "input.jsonl"
    info = make_input(Path(args.corpus), args.mb, data)
    quarter = out / "input_quarter.jsonl"
    quarter_info = make_input(Path(args.corpus), args.mb / 4, quarter)
    mb = info["file_bytes"] / 1e6
    print(f"[bench] input: {info['documents']} documents, {mb:.1f} MB ({data})", flush=True)
    tok_dir = str(resolve_tokenizer_dir(args.tokenizer)[0])
    py = sys.executable
    ours_cmd = [py, "tools/preprocess_data.py", "--tokenizer", args.tokenizer, "--append-eod", "--no-progress"]
    identity = ["--no-normalize", "--min-chars", "0", "--min-tibetan-ratio", "0", "--no-dedup"]
    baseline_name = "megatron-lm" if args.megatron_lm else "sequential"

    runs = []

    def run(name: str, workers: int, cmd: list[str], input_mb: float = mb, docs: int = info["documents"]) -> dict:
        result = {"name": name, "workers": workers, **measure(cmd, out / f"{name}_w{workers}.log")}
        result["mb_per_s"] = round(input_mb / result["seconds"], 3)
        result["docs_per_s"] = round(docs / result["seconds"], 1)
        result["cpu_s_per_mb"] = round(result["cpu_seconds"] / input_mb, 3)
        runs.append(result)
        print(f"[bench] {name:>12} workers={workers}: {result['seconds']:7.1f} s  {result['mb_per_s']:6.2f} MB/s  "
              f"{result['docs_per_s']:7.0f} docs/s  cpu {result['cpu_seconds']:7.1f} s  peak {result['peak_pss_mb']:7.0f} MB",
              flush=True)
        return result

    comparisons = []
    for w in args.workers:
        base_prefix, ours_prefix = str(out / f"base_w{w}"), str(out / f"ours_w{w}")
        if args.megatron_lm:
            cmd = [py, shim, args.megatron_lm, "--input", str(data), "--output-prefix", base_prefix,
                   "--tokenizer-type", "HuggingFaceTokenizer", "--tokenizer-model", tok_dir, "--workers", str(w),
                   "--append-eod", "--log-interval", "100000"]
        else:
            cmd = [py, __file__, "--sequential-baseline", str(data), base_prefix + "_text_document", args.tokenizer]
        base = run(baseline_name, w, cmd)
        ours = run("ours", w, ours_cmd + identity + ["--input", str(data), "--output-prefix", ours_prefix, "--workers", str(w)])
        check = same_tokens(base_prefix + "_text_document", ours_prefix + "_text_document")
        comparisons.append({"workers": w, "speedup": round(base["seconds"] / ours["seconds"], 2),
                            "cpu_ratio": round(base["cpu_seconds"] / ours["cpu_seconds"], 2), **check})
        print(f"[bench] workers={w}: ours/baseline throughput x{comparisons[-1]['speedup']}, "
              f"CPU x{comparisons[-1]['cpu_ratio']}, identical tokens: {check['tokens_identical']}, "
              f"identical files: {check['files_identical']}", flush=True)

    w = max(args.workers)
    run("ours_full", w, ours_cmd + ["--input", str(data), "--output-prefix", str(out / "full"), "--workers", str(w)])
    quarter_mb = quarter.stat().st_size / 1e6
    run("ours_quarter", w, ours_cmd + identity + ["--input", str(quarter), "--output-prefix", str(out / "quarter"),
                                                   "--workers", str(w)], input_mb=quarter_mb, docs=quarter_info["documents"])
    result = {"input": {**info, "corpus": args.corpus, "tokenizer": args.tokenizer}, "baseline": baseline_name,
              "baseline_path": args.megatron_lm, "cpus": os.cpu_count(), "load_average": os.getloadavg(),
              "runs": runs, "comparisons": comparisons}
    (out / "preprocess.json").write_text(json.dumps(result, indent=2))
    plot(result, out / "preprocess.png")
    print(f"[bench] wrote {out / 'preprocess.json'} and {out / 'preprocess.png'}")


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [r for r in result["runs"] if r["name"] != "ours_quarter"]
    labels = [f"{r['name']}\nw={r['workers']}" for r in runs]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    axes[0].bar(labels, [r["mb_per_s"] for r in runs], color=["#999" if r["name"] == result["baseline"] else "#36c" for r in runs])
    axes[0].set_ylabel("MB/s (wall, start-up included)")
    axes[1].bar(labels, [r["peak_pss_mb"] for r in runs], color="#c63")
    axes[1].set_ylabel("peak memory, MB (PSS of process tree)")
    fig.suptitle(f"preprocessing {result['input']['file_bytes'] / 1e6:.0f} MB of Tibetan, tokenizer {result['input']['tokenizer']}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    main()
