"""Fertility of a tokenizer on text files (one segment per line, normalised first); prints JSON.

    python tools/tokenizer_fertility.py --tokenizer runs/tok/qwen2.5-bo32k \
        --input ../shared/data/eval/flores200.dev.bo ../shared/data/eval/flores200.dev.zh
"""

import argparse
import json
import sys
from pathlib import Path


from megatron_tibetan.tokenizer import load_tokenizer
from megatron_tibetan.tokenizer.fertility import fertility


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokenizer", required=True,
                   help="qwen2.5, smollm2, an HF directory, a tokenizer.json, a .gguf or a SentencePiece .model")
    p.add_argument("--input", nargs="+", required=True, help="text files (.txt or .jsonl, plain or .gz/.xz/.zst)")
    p.add_argument("--max-lines", type=int, default=None)
    p.add_argument("--output", help="also write the JSON here")
    args = p.parse_args()
    try:
        tok = load_tokenizer(args.tokenizer)
        result = {"tokenizer": args.tokenizer, "vocab_size": len(tok),
                  "files": [fertility(tok, path, args.max_lines) for path in args.input]}
    except (ValueError, OSError) as error:  # a missing or unreadable tokenizer or input file
        print(f"tokenizer_fertility: error: {error}", file=sys.stderr)
        return 1
    text = json.dumps(result, indent=2, ensure_ascii=False)
    if args.output:
        Path(args.output).write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
