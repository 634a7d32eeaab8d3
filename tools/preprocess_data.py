"""Tokenise raw Tibetan corpora into Megatron indexed datasets (flags follow Megatron-LM's tool).

    python tools/preprocess_data.py --input ../shared/data/mono/nanhai.bo.txt.xz \\
        --output-prefix runs/data/nanhai_smollm2 --tokenizer smollm2 --append-eod --workers 2

writes runs/data/nanhai_smollm2_text_document.bin/.idx and runs/data/nanhai_smollm2_stats.json.
"""

import argparse
import sys
import warnings

# megatron.core warns on import that it falls back from Transformer Engine/Apex (irrelevant to data files)
warnings.filterwarnings("ignore", message="Transformer Engine and Apex are not installed")

from megatron_tibetan.data.preprocess import PreprocessConfig, preprocess  # noqa: E402
from megatron_tibetan.text.filters import FilterConfig  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    defaults = FilterConfig()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", nargs="+", required=True,
                   help="files or globs: .txt (one document per line) or .jsonl, optionally .gz/.xz/.zst")
    p.add_argument("--output-prefix", required=True, help="writes <prefix>_<key>_document.bin/.idx and <prefix>_stats.json")
    p.add_argument("--tokenizer", "--tokenizer-model", dest="tokenizer", required=True,
                   help="preset (smollm2, qwen2.5), HF tokenizer directory, tokenizer.json or .gguf")
    p.add_argument("--tokenizer-type", choices=["HuggingFaceTokenizer"],
                   help="accepted for Megatron-LM command lines; every tokenizer here is a Hugging Face one")
    p.add_argument("--workers", type=int, default=1, help="tokenising processes (one core each)")
    p.add_argument("--json-keys", nargs="+", default=["text"], help="keys of .jsonl records to tokenise")
    p.add_argument("--append-eod", action="store_true", help="append the tokenizer's eos token to every document")
    p.add_argument("--normalize", action=argparse.BooleanOptionalAction, default=True,
                   help="apply megatron_tibetan.text.normalize before filtering and tokenising")
    p.add_argument("--keep-layout", action=argparse.BooleanOptionalAction, default=True,
                   help="a multi-line document (a JSONL text with paragraphs, --paragraphs) keeps its newlines, blank "
                        "lines, indentation and spaces as written; --no-keep-layout: one newline between lines, "
                        "single spaces (a one-line document always becomes one line with single spaces)")
    p.add_argument("--paragraphs", action="store_true", help=".txt: documents are separated by blank lines")
    p.add_argument("--min-chars", type=int, default=defaults.min_chars, help="drop shorter documents (too_short)")
    p.add_argument("--min-tibetan-ratio", type=float, default=defaults.min_tibetan_ratio,
                   help="drop documents with a smaller share of Tibetan characters (0 disables)")
    p.add_argument("--dedup", action=argparse.BooleanOptionalAction, default=True, help="drop exact duplicates")
    p.add_argument("--dedup-memory-mb", type=float, default=defaults.dedup_memory_mb,
                   help="size of the duplicate table (8 bytes per slot, half filled at most)")
    p.add_argument("--limit", type=int, default=None, help="only the first N input documents")
    p.add_argument("--chunk-mb", type=float, default=1.0, help="input sent to a worker at a time")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    config = PreprocessConfig(
        inputs=tuple(args.input),
        output_prefix=args.output_prefix,
        tokenizer=args.tokenizer,
        workers=args.workers,
        json_keys=tuple(args.json_keys),
        append_eod=args.append_eod,
        normalize=args.normalize,
        keep_layout=args.keep_layout,
        paragraphs=args.paragraphs,
        filters=FilterConfig(args.min_chars, args.min_tibetan_ratio, args.dedup, args.dedup_memory_mb),
        limit=args.limit,
        chunk_bytes=int(args.chunk_mb * 2**20),
        progress=not args.no_progress,
    )
    try:
        stats = preprocess(config)
    except (ValueError, FileNotFoundError) as error:  # bad input (readers.InputError is a ValueError)
        print(f"preprocess_data: error: {error}", file=sys.stderr)
        return 1
    dropped = ", ".join(f"{k}={v}" for k, v in stats["dropped"].items() if v) or "none"
    per_syllable = f"{stats['tokens_per_syllable']:.2f}" if stats["tokens_per_syllable"] else "n/a"
    print(f"[preprocess] {stats['documents_in']} documents in, {stats['documents_out']} written, dropped: {dropped}; "
          f"{stats['tokens']} tokens ({per_syllable} per syllable); "
          f"{stats['mb_per_s']:.2f} MB/s, {stats['docs_per_s']:.0f} docs/s in {stats['seconds']:.1f} s")
    for location in stats["invalid_utf8_lines"][:10]:
        print(f"[preprocess] skipped invalid UTF-8 at {location}", file=sys.stderr)
    for prefix in stats["datasets"].values():
        print(f"[preprocess] wrote {prefix}.bin/.idx")
    print(f"[preprocess] stats: {args.output_prefix}_stats.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
