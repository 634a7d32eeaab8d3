#!/usr/bin/env python
"""`make demo`: the whole two-stage study (CPT, then SFT, with the single-stage ablation) on real Tibetan data
with SmolLM2-135M, on CPU; `--tiny` runs the same stages on a random tiny model in a few minutes.

    python tools/demo.py [--tiny] [--force] [--flores-lines N] [--output runs/demo]

Each stage is the project's own command, printed before it runs; stages already done are skipped on a
rerun. Writes OUT/report.md and OUT/report.json (megatron_tibetan/study/, evaluation/study_report.py).
"""

import sys


from megatron_tibetan.study.cli import main

if __name__ == "__main__":
    sys.exit(main())
