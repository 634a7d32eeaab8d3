"""The study's command line: ``python -m megatron_tibetan.study`` (``make demo``, ``tools/demo.py``)."""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

from megatron_tibetan.evaluation.study_report import SOURCE_LANGS, write_report
from megatron_tibetan.study import __doc__ as STUDY_DOC
from megatron_tibetan.study.recipe import DEMO, TINY, Paths, build_stages, data_dir
from megatron_tibetan.study.runner import ROOT, StageFailed, rel, run_stages


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m megatron_tibetan.study", description=STUDY_DOC.split("\n\n")[0],
                                     epilog="Every output lands under --output; see docs/study.md.")
    parser.add_argument("--output", default=None, help="output folder (default runs/demo, runs/demo-tiny with --tiny)")
    parser.add_argument("--tiny", action="store_true", help="a random tiny model and a few steps per stage (tests, CI)")
    parser.add_argument("--force", action="store_true", help="run every stage again, even those already done")
    parser.add_argument("--flores-lines", type=int, help="FLORES-200 dev lines translated per direction "
                        f"(default {DEMO.flores_lines}; {TINY.flores_lines} with --tiny)")
    parser.add_argument("--replay", type=float, default=0.0, metavar="SHARE",
                        help="share of CPT samples drawn from zh/en text (OpenPecha's zh and en sides) instead of Tibetan, "
                             "against forgetting the base model's languages (default 0)")
    parser.add_argument("--seed", type=int, default=1234)
    args = parser.parse_args(argv)
    size = TINY if args.tiny else DEMO
    if args.flores_lines is not None:
        if args.flores_lines < 2:
            parser.error("--flores-lines: at least 2 lines (bootstrap intervals need several)")
        size = replace(size, flores_lines=args.flores_lines)
    if not 0 <= args.replay < 1:
        parser.error(f"--replay {args.replay}: a share of the CPT samples, at least 0 and below 1")
    if args.replay:
        size = replace(size, replay=args.replay)
    out = Path(args.output or ("runs/demo-tiny" if args.tiny else "runs/demo"))
    out = out if out.is_absolute() else ROOT / out
    if not (data_dir() / "README.md").is_file():
        print(f"error: the shared data is not at {data_dir()}: put ../shared/data beside the repository "
              "or set MEGATRON_TIBETAN_DATA", file=sys.stderr)
        return 2
    start = time.perf_counter()
    stages = build_stages(size, out, args.seed)
    print(f"[study] {size.name}: {len(stages)} stages, output {rel(out)}; "
          f"{'--force: every stage runs' if args.force else 'stages done in an earlier run are skipped'}", flush=True)
    try:
        records = run_stages(stages, out, force=args.force)
    except StageFailed as e:
        print(f"\n[study] error: {e}\n[study] its output is above; run the same command again to continue from this stage",
              file=sys.stderr)
        return 1
    report_start = time.perf_counter()
    paths = Paths(out)
    # another subset size (--flores-lines) reuses the trained models and reports beside its evaluation
    report_dir = out if size.flores_lines == (TINY if args.tiny else DEMO).flores_lines else paths.evaluation(size.flores_lines)
    summary = write_report(
        report_dir, size=size.__dict__, records=records, seconds_this_run=time.perf_counter() - start,
        fertility={w: paths.fertility(w) for w in ("base", "extended")},
        bpb=paths.bpb / "metrics.json",
        translation={f"{lang}-bo": paths.evaluation(size.flores_lines) / f"translation_{lang}" / "metrics.json"
                     for lang in SOURCE_LANGS},
        phrasings=paths.evaluation(size.flores_lines) / "phrasings" / "metrics.json",
        references={f"{lang}-bo": paths.flores("bo", size.flores_lines) for lang in SOURCE_LANGS},
        training_logs={arm: out / arm / "metrics.jsonl" for arm in ("cpt", "sft", "cpt_sft")},
        layers={"chain": out / "layers" / "chain", "sft": out / "layers" / "sft"},
        sft_stats=Path(f"{paths.sft_data}_stats.json"), cpt_stats=Path(f"{paths.cpt_data}_stats.json"),
        tokenizers={"base": paths.base_model if size.tiny_model else "smollm2", "extended": paths.tokenizer},
        show=rel,
    )
    print(f"[study] report ({time.perf_counter() - report_start:.0f} s): {rel(report_dir / 'report.md')}, "
          f"{rel(report_dir / 'report.json')}")
    for line in summary:
        print("  " + line)
    print(f"[study] finished in {(time.perf_counter() - start) / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
