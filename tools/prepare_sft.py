"""Prepare supervised fine-tuning data: translation pairs and chat conversations, templated with the
model's chat template, loss on the assistant's answer only, held-out split and leak check.

    python tools/prepare_sft.py --pairs zh=../shared/data/parallel/ntrex128.zh.xz,../shared/data/parallel/ntrex128.bo.xz \\
        --pairs en=../shared/data/parallel/ntrex128.en.xz,../shared/data/parallel/ntrex128.bo.xz \\
        --tokenizer smollm2 --output runs/sft/ntrex_smollm2 --valid-fraction 0.05 \\
        --exclude ../shared/data/eval/flores200.dev.bo --max-length 512

writes runs/sft/ntrex_smollm2_{train,valid}_{tokens,loss_mask}.bin/.idx (megatron-core indexed datasets),
runs/sft/ntrex_smollm2_{train,valid}.jsonl (for inspection) and runs/sft/ntrex_smollm2_stats.json.
An SFT config takes the prefix (runs/sft/ntrex_smollm2) as data.paths.
"""

import argparse
import sys
import warnings

# megatron.core warns on import that it falls back from Transformer Engine/Apex (irrelevant to data files)
warnings.filterwarnings("ignore", message="Transformer Engine and Apex are not installed")

from megatron_tibetan.data.chat import TEMPLATES, TRAIN_ON  # noqa: E402
from megatron_tibetan.data.sft import SFTDataConfig, parse_pair_spec, prepare_sft  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    d = SFTDataConfig(output_prefix="", tokenizer="")
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pairs", action="append", default=[], metavar="LANG=SRC,BO",
                   help="line-aligned parallel files (plain or .gz/.xz/.zst); LANG is zh or en; repeatable")
    p.add_argument("--messages", nargs="+", default=[], metavar="FILE.jsonl",
                   help='chat JSONL: {"messages": [{"role": ..., "content": ...}, ...]} per line')
    p.add_argument("--tokenizer", required=True, help="preset (smollm2, qwen2.5), HF tokenizer directory, tokenizer.json or .gguf")
    p.add_argument("--output", required=True, metavar="PREFIX", help="output prefix (an SFT config's data.paths)")
    p.add_argument("--valid-fraction", type=float, default=d.valid_fraction, help="share of examples held out (0: none)")
    p.add_argument("--exclude", nargs="+", default=[], metavar="FILE",
                   help="Tibetan lines never to train on, e.g. ../shared/data/eval/flores200.dev.bo")
    p.add_argument("--max-length", type=int, default=d.max_length,
                   help="drop examples taking more positions (tokens - 1); use the training seq_length")
    p.add_argument("--seq-length", type=int, default=None, help="report packing efficiency at this length (default: --max-length)")
    p.add_argument("--reverse-share", type=float, default=d.reverse_share,
                   help="share of pairs also given in the reverse direction (bo->zh, bo->en) as anchors")
    p.add_argument("--seed", type=int, default=d.seed, help="phrasing draws, reverse draws and the held-out split")
    p.add_argument("--template", choices=TEMPLATES, default=d.template,
                   help="the model's chat template, or the plain one (auto: the model's when it has one)")
    p.add_argument("--chat-template", metavar="FILE", help="a Jinja chat template to render with instead (overrides --template)")
    p.add_argument("--train-on", choices=TRAIN_ON, default=d.train_on, help="which assistant turns are trained")
    p.add_argument("--normalize-messages", action=argparse.BooleanOptionalAction, default=d.normalize_messages,
                   help="apply text.normalize's Tibetan rules to chat message contents")
    p.add_argument("--keep-layout", action=argparse.BooleanOptionalAction, default=d.keep_layout,
                   help="messages keep newlines, blank lines, indentation and runs of spaces as written; "
                        "--no-keep-layout: one newline between lines, single spaces")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        config = SFTDataConfig(
            output_prefix=args.output, tokenizer=args.tokenizer, pairs=tuple(parse_pair_spec(s) for s in args.pairs),
            messages=tuple(args.messages), exclude=tuple(args.exclude), valid_fraction=args.valid_fraction,
            max_length=args.max_length, reverse_share=args.reverse_share, seed=args.seed, template=args.template,
            chat_template=args.chat_template, train_on=args.train_on, normalize_messages=args.normalize_messages,
            keep_layout=args.keep_layout,
            seq_length=args.seq_length, progress=not args.no_progress,
        )
        stats = prepare_sft(config)
    except (ValueError, FileNotFoundError) as error:  # bad input (readers.InputError is a ValueError)
        print(f"prepare_sft: error: {error}", file=sys.stderr)
        return 1
    dropped = ", ".join(f"{k}={v}" for k, v in stats["dropped"].items() if v) or "none"
    train, valid = stats["splits"]["train"], stats["splits"]["valid"]
    print(f"[prepare_sft] {stats['examples_in']} examples in, {train['examples']} train + {valid['examples']} valid, "
          f"dropped: {dropped}")
    print(f"[prepare_sft] train: {train['tokens']} tokens, {train['trained_tokens']} trained; packing efficiency "
          f"{train['packing_efficiency']:.3f} at seq_length {stats['seq_length']} ({train['packs']} packs); "
          f"{stats['seconds']:.1f} s")
    print(f"[prepare_sft] stats: {args.output}_stats.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
