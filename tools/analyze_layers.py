#!/usr/bin/env python
"""Layer-wise analysis of weight change: tools/analyze_layers.py --base A --adapted B [C ...] --output OUT

Models are HF directories or Megatron checkpoints (exported on the way). Writes OUT/analysis.json, PNG
heatmaps (layer x module) and top-k bars per adapted model, modules.png, correlation plots and report.md.
"""

from __future__ import annotations

import argparse
import sys


from megatron_tibetan.evaluation.layers import analyze
from megatron_tibetan.evaluation.models import hf_model_dir, named_paths
from megatron_tibetan.evaluation.report import layers_report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", required=True, help="the base model (HF dir, Megatron checkpoint dir or 'smollm2')")
    p.add_argument("--adapted", nargs="+", required=True, help="adapted models; NAME=DIR to name one")
    p.add_argument("--chain", action="store_true", help="compare each adapted model with the one before it (base -> CPT -> SFT)")
    p.add_argument("--output", required=True)
    p.add_argument("--top", type=int, default=15, help="tensors listed in report.md per model")
    a = p.parse_args(argv)
    try:
        adapted = named_paths(a.adapted, "--adapted")
        paths = [hf_model_dir(path) for path in adapted.values()]
        result = analyze(hf_model_dir(a.base), paths, names=list(adapted), chain=a.chain)
        written = layers_report(result, a.output, top=a.top)
    except (FileNotFoundError, ValueError, KeyError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"[analyze_layers] wrote {written}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
