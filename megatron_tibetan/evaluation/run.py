"""An evaluation run: models x (perplexity sets, translation sets) -> OUT/metrics.json, OUT/*.hyp, OUT/report.md.

A translation set is named ``LANG-bo.DECODE`` for the first phrasing (the one every figure of the
project uses) and ``LANG-bo.pK.DECODE`` for phrasing K of :mod:`megatron_tibetan.data.prompts`; with
several phrasings, metrics.json has ``phrasings``: chrF per phrasing and its spread, per model and set.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

from megatron_tibetan.data.chat import ChatEncoder, load_chat_template
from megatron_tibetan.data.prompts import phrasings as direction_phrasings
from megatron_tibetan.evaluation import metrics, models, report
from megatron_tibetan.evaluation.perplexity import perplexity
from megatron_tibetan.evaluation.translate import translate
from megatron_tibetan.precision import resolve_dtype
from megatron_tibetan.text.readers import read_lines


def decode_name(beams: int) -> str:
    return "greedy" if beams == 1 else f"beam{beams}"


def hyp_path(out: Path, model: str, set_name: str) -> Path:
    return out / f"{model}.{set_name}.hyp"


def translation_set(lang: str, beams: int, phrasing: int = 0) -> str:
    return f"{lang}-bo." + (f"p{phrasing}." if phrasing else "") + decode_name(beams)


def parse_phrasings(spec: str | None, langs) -> dict[str, list[int]]:
    """``"0"``, ``"all"`` or ``"0,3,7"`` -> the phrasing indices per source language."""
    spec = spec or "0"
    out = {}
    for lang in langs:
        count = len(direction_phrasings(lang, "bo"))
        indices = list(range(count)) if spec == "all" else [int(k) for k in spec.split(",") if k.strip()]
        bad = [k for k in indices if not 0 <= k < count]
        if bad or not indices:
            raise ValueError(f"--phrasings {spec!r}: {lang}→bo has phrasings 0..{count - 1}")
        out[lang] = indices
    return out


def phrasing_spread(results: dict, lang: str, beams: int, indices: list[int]) -> dict:
    """chrF per phrasing of one model and decode, with mean, standard deviation, min and max."""
    chrf = {k: results[translation_set(lang, beams, k)]["chrf"] for k in indices}
    values = list(chrf.values())
    return {"chrf": chrf, "mean": statistics.fmean(values), "stdev": statistics.stdev(values) if len(values) > 1 else 0.0,
            "min": min(values), "max": max(values)}


def evaluate(
    model_paths: dict[str, str],
    out: str | Path,
    ppl_files: list[str] = (),
    translations: dict[str, str] | None = None,
    ref: str | None = None,
    beams: tuple[int, ...] = (1,),
    limit: int | None = None,
    whole_file: bool = False,
    max_length: int | None = None,
    stride: int | None = None,
    batch_size: int = 8,
    max_new_tokens: int = 256,
    max_length_ratio: dict[str, float] | None = None,
    n_bootstrap: int = 1000,
    tokenizer: str | None = None,
    device: str = "cpu",
    dtype: str = "float32",
    template: str = "auto",
    chat_template: str | None = None,
    phrasings: str | None = None,
) -> dict:
    """Evaluate each model; write hypotheses, metrics.json and report.md into ``out``; return the metrics.
    ``template``/``chat_template`` (a Jinja file) as for ``tools/prepare_sft.py``: the template the model was
    fine-tuned with. ``phrasings``: ``"0"`` (default), ``"all"`` or a comma-separated list of indices.
    ``max_length_ratio``: {source language: R}, each translation stops at R characters per source character."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    dtype, note = resolve_dtype(dtype, device.split(":")[0])
    if note:
        print(f"[evaluate] {note}", flush=True)
    translations = translations or {}
    if translations and not ref:
        raise ValueError("translation needs --ref (the Tibetan reference, line-aligned with the sources)")
    refs = read_lines(ref, limit) if translations else []
    sources = {lang: read_lines(src, limit) for lang, src in translations.items()}
    for lang, lines in sources.items():
        if len(lines) != len(refs):
            raise ValueError(f"{translations[lang]} has {len(lines)} lines but {ref} has {len(refs)}: not line-aligned")
    texts = {Path(f).name: read_lines(f, limit) for f in ppl_files}
    chosen = parse_phrasings(phrasings, sources)
    floor = {Path(ref).name: metrics.reference_floor(refs)} if len(refs) > 1 else {}
    template_text = load_chat_template(chat_template) if chat_template else None
    results: dict = {}
    spread: dict = {}
    hyps: dict[str, dict[str, list[str]]] = {}
    for name, path in model_paths.items():
        model, tok, where = models.load(path, tokenizer, device=device, dtype=dtype)
        print(f"[evaluate] {name}: {where}", flush=True)
        results[name] = {}
        for set_name, lines in texts.items():
            docs = ["\n".join(lines)] if whole_file else lines
            results[name][set_name] = perplexity(model, tok, docs, max_length, stride, batch_tokens=batch_size * 1024).as_dict() | {"dtype": dtype}
        encoder = ChatEncoder(tok, template, chat_template=template_text) if sources else None
        for lang, lines in sources.items():
            ratio = (max_length_ratio or {}).get(lang)
            for b in beams:
                for k in chosen[lang]:
                    set_name = translation_set(lang, b, k)
                    start, cpu = time.perf_counter(), time.process_time()
                    out_lines = translate(model, encoder, lines, lang, num_beams=b, batch_size=batch_size,
                                          max_new_tokens=max_new_tokens, phrasing=k, max_length_ratio=ratio)
                    timing = {"seconds": time.perf_counter() - start, "cpu_seconds": time.process_time() - cpu,
                              "max_new_tokens": max_new_tokens, "max_length_ratio": ratio, "dtype": dtype}
                    hyp_path(out, name, set_name).write_text("".join(h + "\n" for h in out_lines), encoding="utf-8")
                    hyps.setdefault(set_name, {})[name] = out_lines
                    results[name][set_name] = metrics.score(out_lines, refs, n_bootstrap, where=set_name) | timing
                if len(chosen[lang]) > 1:
                    spread.setdefault(name, {})[translation_set(lang, b)] = phrasing_spread(results[name], lang, b, chosen[lang])
        report.metrics_report(results, out, phrasings=spread, reference_floor=floor)  # after every model: partial results
        del model
    significance = {s: metrics.paired_bootstrap(h, refs, n_bootstrap) for s, h in hyps.items() if len(h) > 1}
    report.metrics_report(results, out, significance, phrasings=spread, reference_floor=floor)
    return results


def score_files(hyp_files: list[str], ref: str, out: str | Path, n_bootstrap: int = 1000, limit: int | None = None) -> dict:
    """Score existing hypothesis files against one reference (no model); paired test when there are several.
    ``limit``: the first lines of every file, the reference included."""
    out = Path(out)
    refs = read_lines(ref, limit)
    systems = {Path(h).name.removesuffix(".hyp"): read_lines(h, limit) for h in hyp_files}
    if len(systems) != len(hyp_files):
        raise ValueError(f"hypothesis files need distinct names: {hyp_files}")
    set_name = Path(ref).name
    results = {name: {set_name: metrics.score(lines, refs, n_bootstrap, where=str(path))}
               for (name, lines), path in zip(systems.items(), hyp_files)}
    significance = {set_name: metrics.paired_bootstrap(systems, refs, n_bootstrap)} if len(systems) > 1 else {}
    floor = {set_name: metrics.reference_floor(refs)} if len(refs) > 1 else {}
    report.metrics_report(results, out, significance, reference_floor=floor)
    return results
