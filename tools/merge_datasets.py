"""Merge preprocessed shards into one Megatron indexed dataset (the counterpart of slurm/preprocess.sh).

    python tools/merge_datasets.py --input runs/data/shards --output-prefix runs/data/nanhai_smollm2

reads every shard in the directory (or the shard prefixes given), in name order, and writes
<output-prefix>_text_document.bin/.idx and <output-prefix>_stats.json: the same dataset a single
tools/preprocess_data.py run over the shards' inputs writes, duplicates across shards removed.
"""

import argparse
import sys
import warnings

warnings.filterwarnings("ignore", message="Transformer Engine and Apex are not installed")

from megatron_tibetan.data.merge import MergeError, merge_datasets  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", nargs="+", required=True,
                   help="a directory of shards (all *_stats.json in it, by name) or shard output prefixes, in order")
    p.add_argument("--output-prefix", required=True, help="writes <prefix>_<key>_document.bin/.idx and <prefix>_stats.json")
    p.add_argument("--dedup", action=argparse.BooleanOptionalAction, default=None,
                   help="remove documents repeating one of an earlier shard (default: as the shards deduplicated)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    try:
        stats = merge_datasets(args.input, args.output_prefix, dedup=args.dedup, progress=not args.no_progress)
    except (MergeError, FileNotFoundError) as error:
        print(f"merge_datasets: error: {error}", file=sys.stderr)
        return 1
    print(f"[merge] {len(stats['shards'])} shards: {stats['documents_in']} documents in, {stats['documents_out']} written "
          f"({stats['cross_shard_duplicates']} repeats across shards removed); {stats['tokens']} tokens "
          f"in {stats['merge_seconds']:.1f} s")
    for prefix in stats["datasets"].values():
        print(f"[merge] wrote {prefix}.bin/.idx")
    print(f"[merge] stats: {args.output_prefix}_stats.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
