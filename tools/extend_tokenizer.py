"""Extend a base tokenizer with Tibetan tokens trained on a corpus; saves an HF tokenizer directory.

The method follows the base: BPE merges for a byte-level BPE tokenizer (Qwen2.5, SmolLM2, GPT-2 style),
SentencePiece pieces merged into the model for a SentencePiece base (a tokenizer.model, or an HF directory
holding one: Llama 2, Gemma, Mistral).

    python tools/extend_tokenizer.py --base qwen2.5 --num-new-tokens 32000 --output runs/tok/qwen2.5-bo32k \
        --corpus ../shared/data/mono/nanhai.bo.txt.xz ../shared/data/mono/kangyur.bo.txt.xz --max-lines-per-file all 20000
    python tools/extend_tokenizer.py --base LLAMA2_DIR --num-new-tokens 32000 --output runs/tok/llama2-bo32k \
        --corpus ../shared/data/mono/nanhai.bo.txt.xz
"""

import argparse
import json
import sys


from megatron_tibetan.tokenizer.extend import extend_tokenizer


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", required=True,
                   help="qwen2.5, smollm2, an HF directory, a tokenizer.json, a .gguf or a SentencePiece .model")
    p.add_argument("--corpus", nargs="+", required=True, help="Tibetan text files (.txt or .jsonl, plain or .gz/.xz/.zst)")
    p.add_argument("--num-new-tokens", type=int, required=True)
    p.add_argument("--output", required=True, help="directory for the extended tokenizer")
    p.add_argument("--max-lines-per-file", nargs="+", default=["all"],
                   help="read at most this many lines: one value for every file or one per file ('all': no limit)")
    p.add_argument("--min-frequency", type=int, default=None,
                   help="byte-level BPE bases: a merge needs at least this many occurrences (default 2)")
    p.add_argument("--unit", choices=["syllable", "run"], default=None,
                   help="byte-level BPE bases: Tibetan pre-token, one syllable or a run of tsheg-joined syllables "
                        "(multi-syllable tokens; default run)")
    p.add_argument("--piece-type", choices=["bpe", "unigram"], default=None,
                   help="SentencePiece bases: how the Tibetan pieces are trained (default bpe)")
    args = p.parse_args()
    try:
        limits = [None if v == "all" else int(v) for v in args.max_lines_per_file]
        if len(limits) == 1:
            limits *= len(args.corpus)
        info = extend_tokenizer(args.base, args.corpus, args.num_new_tokens, args.output, limits,
                                args.min_frequency, args.unit, args.piece_type)
    except (ValueError, FileNotFoundError) as error:  # bad input: readers.InputError is a ValueError
        print(f"extend_tokenizer: error: {error}", file=sys.stderr)
        return 1
    print(json.dumps(info, indent=2, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
