#!/usr/bin/env python
"""Evaluate models (HF directories or Megatron checkpoints) or score existing translations.

  tools/evaluate.py --model DIR [--model NAME=DIR ...] --ppl FILES --translate zh=SRC,en=SRC --ref BO_FILE --output OUT
  tools/evaluate.py --hyp FILE [FILE ...] --ref FILE --output OUT

Writes OUT/metrics.json, OUT/<model>.<set>.hyp and OUT/report.md (see megatron_tibetan/evaluation/).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


from megatron_tibetan.config import dtype_name
from megatron_tibetan.data.chat import TEMPLATES
from megatron_tibetan.evaluation.models import named_paths
from megatron_tibetan.evaluation.run import evaluate, score_files
from megatron_tibetan.text.readers import InputError


def _per_language(spec: str | None, flag: str, example: str) -> dict[str, str]:
    """{LANG: VALUE} from "LANG=VALUE[,LANG=VALUE]"."""
    out = {}
    for item in (spec or "").split(","):
        if item:
            lang, sep, value = item.partition("=")
            if not sep:
                raise ValueError(f"{flag}: {item!r} is not LANG=VALUE (e.g. {example})")
            out[lang] = value
    return out


def _length_ratios(spec: str | None, languages) -> dict[str, float] | None:
    """--max-length-ratio: one number for every source language, or LANG=R per language (each translated
    language needs one, and none may be given for a language not translated)."""
    if spec is None:
        return None
    if not languages:
        raise ValueError("--max-length-ratio limits translations, and no --translate is given")
    try:
        if "=" not in spec:
            return {lang: float(spec) for lang in languages}
        ratios = {lang: float(r) for lang, r in _per_language(spec, "--max-length-ratio", "zh=6,en=2").items()}
    except ValueError as e:
        raise ValueError(f"--max-length-ratio {spec!r}: {e}") from None
    if set(ratios) != set(languages):
        raise ValueError(f"--max-length-ratio names {sorted(ratios)} but --translate gives {sorted(languages)}")
    return ratios


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", action="append", default=[], help="HF dir, Megatron checkpoint dir or 'smollm2'; NAME=DIR to name it")
    p.add_argument("--ppl", nargs="*", default=[], help="text files scored for perplexity and bits per byte (one document per line)")
    p.add_argument("--whole-file", action="store_true", help="score each --ppl file as one document (sliding window)")
    p.add_argument("--translate", help="LANG=SOURCE_FILE[,LANG=SOURCE_FILE]: translate into Tibetan (zh, en)")
    p.add_argument("--ref", help="Tibetan reference, line-aligned with the sources / hypotheses")
    p.add_argument("--hyp", nargs="*", default=[], help="score these hypothesis files against --ref (no model)")
    p.add_argument("--output", required=True, help="output directory")
    p.add_argument("--beams", default="1", help="comma-separated beam sizes; 1 is greedy (e.g. 1,4)")
    p.add_argument("--limit", type=int, help="use only the first N lines of every input file (--ppl files, sources, --ref, --hyp files)")
    p.add_argument("--max-length", type=int, help="perplexity window in tokens (default: the model's context, at most 2048)")
    p.add_argument("--stride", type=int, help="sliding-window step in tokens (default: half the window)")
    p.add_argument("--batch-size", type=int, default=8, help="sentences per generation batch; perplexity packs batch-size x 1024 tokens")
    p.add_argument("--max-new-tokens", type=int, default=256, help="the most tokens any translation may have")
    p.add_argument("--max-length-ratio", metavar="R|LANG=R,...",
                   help="stop each translation at R characters per character of its source (normalised), one R for "
                        "all or one per source language; e.g. the 99th percentile of the training pairs' length ratio")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for intervals and paired tests")
    p.add_argument("--tokenizer", help="tokenizer spec when the model directory has none")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", type=dtype_name, choices=["float32", "bfloat16", "float16", "auto"],
                   help="weights and activations (bf16, fp32, fp16 are read as the long names; auto: bf16 where the "
                        "device computes it natively, else fp32); log-probabilities are summed in fp32 either way")
    p.add_argument("--template", choices=TEMPLATES, default="auto",
                   help="chat template of the prompts, as given to tools/prepare_sft.py (auto: the model's own if it has one, else plain)")
    p.add_argument("--chat-template", metavar="FILE", help="a Jinja chat template file (as tools/prepare_sft.py --chat-template)")
    p.add_argument("--phrasings", default="0", metavar="0|all|LIST",
                   help="prompt phrasings to translate with (data/prompts.py): 0 (the default), all, or e.g. 0,3,7; "
                        "chrF per phrasing and its spread are reported")
    a = p.parse_args(argv)
    if a.hyp and (a.model or not a.ref):
        p.error("--hyp scores existing translations: give --ref and no --model")
    if not a.hyp and (not a.model or not (a.ppl or a.translate)):
        p.error("give --model and at least one of --ppl, --translate (or --hyp with --ref)")
    try:
        run(a)
    except (FileNotFoundError, InputError, ValueError, KeyError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"[evaluate] wrote {Path(a.output) / 'metrics.json'} and {Path(a.output) / 'report.md'}")
    return 0


def run(a: argparse.Namespace) -> None:
    if a.hyp:
        score_files(a.hyp, a.ref, a.output, a.bootstrap, a.limit)
    else:
        translations = _per_language(a.translate, "--translate", "zh=flores200.dev.zh")
        evaluate(
            named_paths(a.model, "--model"), a.output, ppl_files=a.ppl, translations=translations, ref=a.ref,
            beams=tuple(int(b) for b in a.beams.split(",")), limit=a.limit, whole_file=a.whole_file,
            max_length=a.max_length, stride=a.stride, batch_size=a.batch_size, max_new_tokens=a.max_new_tokens,
            max_length_ratio=_length_ratios(a.max_length_ratio, translations),
            n_bootstrap=a.bootstrap, tokenizer=a.tokenizer, device=a.device, dtype=a.dtype,
            template=a.template, chat_template=a.chat_template, phrasings=a.phrasings,
        )


if __name__ == "__main__":
    sys.exit(main())
