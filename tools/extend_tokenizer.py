"""Extend a base tokenizer with Tibetan tokens trained on a corpus; saves an HF tokenizer directory.

    python tools/extend_tokenizer.py --base qwen2.5 --num-new-tokens 32000 --output runs/tok/qwen2.5-bo32k \
        --corpus ../shared/data/mono/nanhai.bo.txt.xz ../shared/data/mono/kangyur.bo.txt.xz --max-lines-per-file all 20000
"""

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from megatron_tibetan.tokenizer.extend import extend_tokenizer  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", required=True, help="qwen2.5, smollm2, an HF directory, a tokenizer.json or a .gguf")
    p.add_argument("--corpus", nargs="+", required=True, help="Tibetan text files (.txt or .jsonl, plain or .gz/.xz/.zst)")
    p.add_argument("--num-new-tokens", type=int, required=True)
    p.add_argument("--output", required=True, help="directory for the extended tokenizer")
    p.add_argument("--max-lines-per-file", nargs="+", default=["all"],
                   help="read at most this many lines: one value for every file or one per file ('all': no limit)")
    p.add_argument("--min-frequency", type=int, default=2, help="a merge needs at least this many occurrences")
    p.add_argument("--unit", choices=["syllable", "run"], default="run",
                   help="Tibetan pre-token: one syllable, or a run of tsheg-joined syllables (multi-syllable tokens)")
    args = p.parse_args()
    limits = [None if v == "all" else int(v) for v in args.max_lines_per_file]
    if len(limits) == 1:
        limits *= len(args.corpus)
    info = extend_tokenizer(args.base, args.corpus, args.num_new_tokens, args.output, limits,
                            args.min_frequency, args.unit)
    print(json.dumps(info, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
