"""Convert checkpoints between Hugging Face and Megatron (megatron-core dist_checkpointing).

  python tools/convert_checkpoint.py import --hf SRC --output MEGATRON_DIR [--tp N --pp M] [--tokenizer EXTENDED_DIR]
  python tools/convert_checkpoint.py export --megatron MEGATRON_DIR --output HF_DIR

SRC: an HF directory (safetensors, or anything transformers loads), a .gguf file, or the preset `smollm2`.
With TP x PP > 1, import starts itself under torchrun (gloo on CPU, nccl on GPU) with TP x PP ranks.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from pathlib import Path



def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    imp = sub.add_parser("import", help="HF checkpoint -> Megatron checkpoint directory")
    imp.add_argument("--hf", required=True, help="HF directory, .gguf file, or the preset 'smollm2'")
    imp.add_argument("--output", required=True, help="Megatron checkpoint directory to create")
    imp.add_argument("--tp", type=int, default=1, help="tensor parallel size")
    imp.add_argument("--pp", type=int, default=1, help="pipeline parallel size")
    imp.add_argument("--tokenizer", help="extended tokenizer directory: resize the embeddings for it")
    imp.add_argument("--init", default="subtoken_mean", choices=["subtoken_mean", "mean"],
                     help="initialisation of the new embedding rows (with --tokenizer)")
    exp = sub.add_parser("export", help="Megatron checkpoint directory -> HF directory")
    exp.add_argument("--megatron", required=True, help="Megatron checkpoint directory (model.json, latest)")
    exp.add_argument("--output", required=True, help="HF directory to write")
    return parser.parse_args(argv)


def relaunch_under_torchrun(nproc: int) -> None:
    """Re-run this command with ``nproc`` ranks (only the first call: torchrun sets WORLD_SIZE)."""
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           str(Path(__file__).resolve()), *sys.argv[1:]]
    os.execvpe(cmd[0], cmd, env)


def main(argv=None) -> int:
    args = parse_args(argv)
    start = time.perf_counter()
    if args.command == "import" and args.tp * args.pp > 1 and "WORLD_SIZE" not in os.environ:
        relaunch_under_torchrun(args.tp * args.pp)
    from megatron_tibetan.checkpoint_dir import CheckpointSaveError
    from megatron_tibetan.convert import export_hf, import_hf
    from megatron_tibetan.models import UnsupportedModelError

    try:
        if args.command == "import":
            import_hf(args.hf, args.output, tp=args.tp, pp=args.pp, tokenizer=args.tokenizer, init_method=args.init)
        else:
            export_hf(args.megatron, args.output)
    except (FileNotFoundError, FileExistsError, UnsupportedModelError, ValueError, KeyError, CheckpointSaveError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if int(os.environ.get("RANK", "0")) == 0:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"[convert] {args.command}: {time.perf_counter() - start:.1f} s, peak memory (rank 0) {peak:.0f} MiB", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
