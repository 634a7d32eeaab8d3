"""Preprocessing throughput against baselines measured in the same run, for several tokenizers.

    python benchmarks/preprocess.py [--mb 24] [--workers 2] [--tokenizers qwen2.5 smollm2 runs/tok/qwen2.5-bo32k]
        [--before /work/ext/before/tools/preprocess_data.py] [--megatron-lm PATH/tools/preprocess_data.py]
    python benchmarks/preprocess.py --encoders --before ... [--tokenizers ...]   # the encoders alone

The input is the first ``--mb`` MB of ``--corpus`` (Kangyur by default) written once as .jsonl. For each
tokenizer, each system runs as a separate process on the whole input and on its first quarter:

- ``ours``: tools/preprocess_data.py with normalisation and filters off (so that every system must write
  the same tokens; checked through megatron-core's IndexedDataset), ``--workers`` processes;
- ``ours-default``: the same with the project's default normalisation, filters and deduplication;
- ``gigatoken`` (where installed and where it loads the tokenizer): what Megatron-LM's
  tools/preprocess_data_fast.py does, the whole file encoded by ``gigatoken.encode_files`` on
  ``--workers`` threads (``RAYON_NUM_THREADS``) and written in one batch;
- ``before`` (``--before``): tools/preprocess_data.py of an earlier checkout, to measure a change;
- ``megatron-lm`` (``--megatron-lm``): Megatron-LM's own tools/preprocess_data.py, run unmodified
  through a runner kept beside its checkout (``--megatron-shim``) that supplies what it imports from
  the training stack.

Measured per run: wall seconds (start-up included), CPU seconds of the process tree, peak memory (sum of
PSS over the process tree, sampled every 0.2 s). Steady state is measured two ways. (1) Processing only:
``ours`` and ``gigatoken`` time their own work from the first chunk (the first byte read) to the last
write, CPU seconds of every process and thread and wall seconds, so imports, tokenizer loading and the
encoder check are left out. (2) The difference between the two runs, (MB_full - MB_quarter) /
(s_full - s_quarter), for every system; on a busy machine the start-up (about 10 CPU-s of imports) varies
by more than the work on a small input, so (1) is the one to read there. Peak memory on the full and
quarter input shows whether it grows with the input. ``--repeat`` runs the whole set again.

``--encoders`` measures the encoders alone instead, in one process on one core: the encoder of this
checkout (``build_encoder(tokenizer, select_encoder's choice)``) and the one of ``--before`` (its
``make_encoder``), each fed the same 1 MB chunks of the input in turn, chunk by chunk alternating which
goes first, so that a busy machine slows both alike; CPU seconds (start-up excluded), MB per CPU-second,
the ratio, and whether the ids are identical. Writes <out>/preprocess.json (or encoders.json) and a .png.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
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
    try:
        tree = [proc] + proc.children(recursive=True)
    except psutil.NoSuchProcess:  # it has just exited
        return 0
    for p in tree:
        try:
            total += p.memory_full_info().pss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return total


def measure(cmd: list[str], log: Path, env: dict | None = None) -> dict:
    """Run ``cmd``; wall seconds, CPU seconds of the process tree, peak PSS of the tree (MB)."""
    import psutil

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    with open(log, "w") as out:
        popen = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
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


def gigatoken_baseline(input_path: str, prefix: str, tokenizer_dir: str, append_eod: bool = True) -> None:
    """Megatron-LM's tools/preprocess_data_fast.py path: gigatoken encodes the whole .jsonl file (on
    RAYON_NUM_THREADS threads), and the documents are written in one batch (eod appended). The processing
    time (from reading to writing) goes to <prefix>_timing.json."""
    import gigatoken
    import numpy as np
    from megatron.core.datasets.indexed_dataset import DType, IndexedDatasetBuilder
    from transformers import AutoTokenizer

    tokenizer = gigatoken.Tokenizer(tokenizer_dir)
    eod = AutoTokenizer.from_pretrained(tokenizer_dir).eos_token_id
    start, cpu_start = time.perf_counter(), time.process_time()
    documents = tokenizer.encode_files(gigatoken.JsonlFileSource([input_path], field="text"))
    offsets = np.asarray(documents.layout.offsets.data)
    tokens = np.asarray(documents.layout.content.data)[offsets[0] : offsets[-1]]
    lengths = np.diff(offsets)
    if append_eod:
        tokens = np.insert(tokens, np.cumsum(lengths), eod)
        lengths = lengths + 1
    builder = IndexedDatasetBuilder(prefix + ".bin", dtype=DType.optimal_dtype(tokenizer.vocab_size))
    builder.data_file.write(tokens.astype(builder.dtype).tobytes(order="C"))
    builder.sequence_lengths.extend(lengths.tolist())
    builder.document_indices.extend(range(len(builder.document_indices), len(builder.document_indices) + len(lengths)))
    builder.finalize(prefix + ".idx")
    Path(prefix + "_timing.json").write_text(json.dumps(
        {"processing_seconds": time.perf_counter() - start, "processing_cpu_seconds": time.process_time() - cpu_start}))


def gigatoken_loads(tokenizer_dir: str) -> str | None:
    """None if gigatoken loads the tokenizer, else why not."""
    try:
        import gigatoken

        gigatoken.Tokenizer(tokenizer_dir)
        return None
    except Exception as error:
        return str(error).strip().splitlines()[0]


def _processing(prefix: str, system: str) -> dict:
    """The processing-only time a run reports about itself (ours: stats.json; gigatoken: timing.json)."""
    path = Path(prefix + ("_timing.json" if system == "gigatoken" else "_stats.json"))
    if system not in ("ours", "ours-default", "gigatoken") or not path.is_file():
        return {}
    timing = json.loads(path.read_text())
    if "processing_cpu_seconds" not in timing:
        return {}
    return {"processing_seconds": round(timing["processing_seconds"], 3),
            "processing_cpu_seconds": round(timing["processing_cpu_seconds"], 3)}


def run_systems(args, info: dict, sizes: dict, out: Path) -> dict:
    from megatron_tibetan.tokenizer.base import resolve_tokenizer_dir

    shim = args.megatron_shim or (args.megatron_lm and str(Path(args.megatron_lm).parents[2] / "run_megatron_preprocess.py"))
    py = sys.executable
    common = ["--append-eod", "--no-progress", "--workers", str(args.workers)]
    identity = ["--no-normalize", "--min-chars", "0", "--min-tibetan-ratio", "0", "--no-dedup", *common]
    runs, summary = [], []
    for repeat in range(args.repeat):
        for spec in args.tokenizers:
            tok_dir = str(resolve_tokenizer_dir(spec)[0])
            ours = [py, "tools/preprocess_data.py", "--tokenizer", spec]
            systems = {"ours": lambda i, o: [*ours, "--input", i, "--output-prefix", o, *identity],
                       "ours-default": lambda i, o: [*ours, "--input", i, "--output-prefix", o, *common]}
            refused = gigatoken_loads(tok_dir)
            if refused is None:
                systems["gigatoken"] = lambda i, o: [py, __file__, "--gigatoken-baseline", i, o + "_text_document", tok_dir]
            if args.before:
                systems["before"] = lambda i, o: [py, args.before, "--tokenizer", spec, "--input", i, "--output-prefix", o, *identity]
            if args.megatron_lm:
                systems["megatron-lm"] = lambda i, o: [py, shim, args.megatron_lm, "--input", i, "--output-prefix", o,
                                                       "--tokenizer-type", "HuggingFaceTokenizer", "--tokenizer-model", tok_dir,
                                                       "--workers", str(args.workers), "--append-eod", "--log-interval", "100000"]
            name = Path(spec).name
            measured = {}
            for system, command in systems.items():
                for size, path in sizes.items():
                    prefix = str(out / f"{name}_{system}_{size}")
                    env = {**os.environ, "RAYON_NUM_THREADS": str(args.workers)}
                    result = measure(command(str(path), prefix), out / f"{name}_{system}_{size}.log", env)
                    mb = info[size]["text_bytes"] / 1e6
                    result.update(tokenizer=spec, system=system, size=size, repeat=repeat, mb=round(mb, 2),
                                  mb_per_s=round(mb / result["seconds"], 3),
                                  **_processing(prefix + ("_text_document" if system == "gigatoken" else ""), system))
                    runs.append(result)
                    measured[system, size] = result
                    print(f"[bench] {name:>16} {system:>12} {size:>7}: {result['seconds']:7.1f} s  {result['mb_per_s']:6.2f} MB/s  "
                          f"cpu {result['cpu_seconds']:7.1f} s  peak {result['peak_pss_mb']:7.0f} MB", flush=True)
            for system in systems:
                full, quarter = measured[system, "full"], measured[system, "quarter"]
                mb = full["mb"] - quarter["mb"]
                row = {"tokenizer": spec, "system": system, "repeat": repeat, "wall_mb_per_s": full["mb_per_s"],
                       "steady_mb_per_s": round(mb / max(full["seconds"] - quarter["seconds"], 1e-3), 2),
                       "steady_cpu_s_per_mb": round((full["cpu_seconds"] - quarter["cpu_seconds"]) / mb, 3),
                       "cpu_seconds": full["cpu_seconds"], "peak_pss_mb": full["peak_pss_mb"],
                       "peak_pss_mb_quarter": quarter["peak_pss_mb"]}
                if "processing_cpu_seconds" in full:
                    row.update(processing_cpu_s_per_mb=round(full["processing_cpu_seconds"] / full["mb"], 4),
                               processing_mb_per_s=round(full["mb"] / full["processing_seconds"], 2))
                if system not in ("ours", "ours-default"):
                    row.update(same_tokens(str(out / f"{name}_{system}_full_text_document"), str(out / f"{name}_ours_full_text_document")))
                summary.append(row)
                print(f"[bench] {name:>16} {system:>12}: "
                      + (f"processing {row['processing_cpu_s_per_mb']:.4f} CPU-s/MB, {row['processing_mb_per_s']:.1f} MB/s; "
                         if "processing_cpu_s_per_mb" in row else "")
                      + f"full-quarter {row['steady_cpu_s_per_mb']:.3f} CPU-s/MB, {row['steady_mb_per_s']:.2f} MB/s; wall "
                      f"{row['wall_mb_per_s']:.2f} MB/s; peak {row['peak_pss_mb_quarter']:.0f} -> {row['peak_pss_mb']:.0f} MB"
                      + (f"; identical tokens: {row['tokens_identical']}" if "tokens_identical" in row else ""), flush=True)
            if refused:
                print(f"[bench] {name}: gigatoken refuses the tokenizer: {refused}", flush=True)
    stats = {spec: json.loads((out / f"{Path(spec).name}_ours_full_stats.json").read_text()) for spec in args.tokenizers}
    return {"runs": runs, "summary": summary,
            "encoders": {spec: {"encoder": s["encoder"], "reason": s["encoder_reason"]} for spec, s in stats.items()}}


def _load_module(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def compare_encoders(args, corpus_path: Path) -> dict:
    """This checkout's encoder against --before's, alternating on the same 1 MB chunks (one core)."""
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    from tokenizers import Tokenizer

    from megatron_tibetan.tokenizer.encoder_choice import build_encoder, select_encoder
    from megatron_tibetan.tokenizer.base import resolve_tokenizer_dir

    before_path = Path(args.before).resolve().parents[1] / "megatron_tibetan" / "data" / "encode.py"
    before_module = _load_module("before_encode", before_path)
    texts = [json.loads(line)["text"] for line in corpus_path.open(encoding="utf-8")]
    chunks, chunk, size = [], [], 0
    for text in texts:
        chunk.append(text)
        size += len(text.encode("utf-8"))
        if size >= 1 << 20:
            chunks.append(chunk)
            chunk, size = [], 0
    chunks += [chunk] if chunk else []
    mb = sum(len(t.encode("utf-8")) for t in texts) / 1e6
    rows = []
    for repeat in range(args.repeat):
        for spec in args.tokenizers:
            tokenizer = Tokenizer.from_file(str(resolve_tokenizer_dir(spec)[0] / "tokenizer.json"))
            now = build_encoder(tokenizer, select_encoder(tokenizer, chunks[0][:200]).name)
            before = before_module.make_encoder(tokenizer)
            encode = {"now": now.encode, "before": before.encode_batch}  # each in its own output form
            cpu, identical = {"now": 0.0, "before": 0.0}, True
            for k, c in enumerate(chunks):
                outputs = {}
                for system in (("now", "before") if k % 2 == 0 else ("before", "now")):
                    start = time.process_time()
                    outputs[system] = encode[system](c)
                    cpu[system] += time.process_time() - start
                identical &= outputs["now"].as_lists() == outputs["before"]
            row = {"tokenizer": spec, "repeat": repeat, "encoder": now.name, "mb": round(mb, 2),
                   "before_mb_per_cpu_s": round(mb / cpu["before"], 2), "now_mb_per_cpu_s": round(mb / cpu["now"], 2),
                   "ratio": round(cpu["before"] / cpu["now"], 2), "ids_identical": bool(identical)}
            rows.append(row)
            print(f"[bench] encoders {Path(spec).name:>16}: before {row['before_mb_per_cpu_s']:6.2f} MB/CPU-s, now "
                  f"{row['now_mb_per_cpu_s']:6.2f} ({now.name}), {row['ratio']:.2f}x, ids identical: {identical}", flush=True)
    return {"encoders_alone": rows}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokenizers", nargs="+", default=["qwen2.5", "smollm2"])
    p.add_argument("--before", help="tools/preprocess_data.py of an earlier checkout")
    p.add_argument("--megatron-lm", help="path to Megatron-LM's tools/preprocess_data.py")
    p.add_argument("--megatron-shim", help="runner that supplies what the script imports from megatron.training "
                   "(default: run_megatron_preprocess.py beside the Megatron-LM checkout)")
    p.add_argument("--corpus", default=str(ROOT.parent / "shared" / "data" / "mono" / "kangyur.bo.txt.xz"))
    p.add_argument("--mb", type=float, default=24.0, help="MB of corpus text to process")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--encoders", action="store_true", help="compare the encoders alone with --before's")
    p.add_argument("--out", default=str(ROOT / "out" / "bench_preprocess"))
    p.add_argument("--gigatoken-baseline", nargs=3, metavar=("INPUT", "PREFIX", "TOKENIZER_DIR"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.gigatoken_baseline:
        return gigatoken_baseline(*args.gigatoken_baseline)

    import warnings

    warnings.filterwarnings("ignore")
    shim = args.megatron_shim or (args.megatron_lm and str(Path(args.megatron_lm).parents[2] / "run_megatron_preprocess.py"))
    for path in filter(None, [args.before, args.megatron_lm, shim]):
        if not Path(path).is_file():
            sys.exit(f"benchmarks/preprocess.py: error: {path} does not exist")
    if args.encoders and not args.before:
        sys.exit("benchmarks/preprocess.py: error: --encoders compares with --before, which is missing")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sizes = {"full": out / "input.jsonl", "quarter": out / "input_quarter.jsonl"}
    info = {size: make_input(Path(args.corpus), args.mb / (4 if size == "quarter" else 1), path)
            for size, path in sizes.items()}
    print(f"[bench] input: {info['full']['documents']} documents, {info['full']['file_bytes'] / 1e6:.1f} MB", flush=True)
    result = {"input": {**info["full"], "corpus": args.corpus}, "workers": args.workers, "cpus": os.cpu_count(),
              "load_average_before": os.getloadavg()}
    if args.encoders:
        result.update(compare_encoders(args, sizes["full"]), load_average=os.getloadavg())
        (out / "encoders.json").write_text(json.dumps(result, indent=2))
        plot_encoders(result, out / "encoders.png")
        print(f"[bench] wrote {out / 'encoders.json'} and {out / 'encoders.png'}")
        return
    result.update(run_systems(args, info, sizes, out), load_average=os.getloadavg())
    (out / "preprocess.json").write_text(json.dumps(result, indent=2))
    plot(result, out / "preprocess.png")
    print(f"[bench] wrote {out / 'preprocess.json'} and {out / 'preprocess.png'}")


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["summary"]
    tokenizers = list(dict.fromkeys(r["tokenizer"] for r in rows))
    systems = list(dict.fromkeys(r["system"] for r in rows))
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    width = 0.8 / len(systems)
    for k, system in enumerate(systems):
        for t, spec in enumerate(tokenizers):
            mine = [r for r in rows if r["system"] == system and r["tokenizer"] == spec]
            if not mine:
                continue
            x = t + k * width
            costs = [r.get("processing_cpu_s_per_mb", r["steady_cpu_s_per_mb"]) for r in mine]
            axes[0].bar(x, sum(costs) / len(costs), width, color=f"C{k}", label=system if t == 0 else None,
                        hatch=None if "processing_cpu_s_per_mb" in mine[0] else "//")
            axes[0].plot([x] * len(costs), costs, "k.", markersize=4)
            axes[1].bar(x, max(r["peak_pss_mb"] for r in mine), width, color=f"C{k}")
            axes[1].plot(x, max(r["peak_pss_mb_quarter"] for r in mine), "kv", markersize=5)
    labels = ["CPU-s per MB, steady (processing only; hatched: full - quarter); dots: repeats",
              "peak memory MB, PSS (triangle: quarter input)"]
    for ax, label in zip(axes, labels):
        ax.set_xticks([t + 0.4 - width / 2 for t in range(len(tokenizers))], [Path(s).name for s in tokenizers])
        ax.set_ylabel(label, fontsize=8)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"preprocessing {result['input']['text_bytes'] / 1e6:.0f} MB of Tibetan, {result['workers']} workers")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def plot_encoders(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["encoders_alone"]
    tokenizers = list(dict.fromkeys(r["tokenizer"] for r in rows))
    fig, ax = plt.subplots(figsize=(7, 4))
    for k, (key, label) in enumerate([("before_mb_per_cpu_s", "before"), ("now_mb_per_cpu_s", "now")]):
        for t, spec in enumerate(tokenizers):
            values = [r[key] for r in rows if r["tokenizer"] == spec]
            ax.bar(t + k * 0.4, sum(values) / len(values), 0.4, color=f"C{k}", label=label if t == 0 else None)
            ax.plot([t + k * 0.4] * len(values), values, "k.", markersize=4)
    ax.set_xticks([t + 0.2 for t in range(len(tokenizers))], [Path(s).name for s in tokenizers])
    ax.set_ylabel("MB per CPU-second, one core (dots: repeats)")
    ax.legend()
    fig.suptitle("preprocessing encoders alone, alternating on the same 1 MB chunks")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    main()
