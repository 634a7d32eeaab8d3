"""report.md (tables and plots) and JSON for an evaluation run and for a layer-wise analysis."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

from megatron_tibetan.evaluation import plots
from megatron_tibetan.evaluation.layers import MODULE_ORDER

METRIC_COLUMNS = ("bleu_syllable", "bleu_default", "chrf", "chrf_pp")


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text)


def _fmt(x, digits: int = 4) -> str:
    if x is None:
        return "–"
    if isinstance(x, float):
        return f"{x:.{digits}g}" if math.isfinite(x) else str(x)
    return str(x)


def markdown_table(header: list[str], rows: list[list]) -> list[str]:
    """The lines of a Markdown table; float cells to 4 significant digits, anything else as str."""
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + [
        "| " + " | ".join(_fmt(c) for c in row) + " |" for row in rows
    ]


def write_json(data: dict, path: Path) -> Path:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False, allow_nan=True) + "\n", encoding="utf-8")
    return path


def layers_report(analysis: dict, out: str | Path, top: int = 15) -> Path:
    """analysis.json, heatmap_/topk_ PNGs per comparison, modules.png, correlation PNGs and report.md."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(analysis, out / "analysis.json")
    lines = ["# Layer-wise analysis", "", f"Base: `{analysis['base']}`" + (" (chained: each model vs the one before)" if analysis["chain"] else ""), ""]
    lines += ["Relative change ||ΔW|| / ||W|| (Frobenius norms; a group is sqrt(Σ||ΔW||²) / sqrt(Σ||W||²)). "
              "RMS ΔW per value is the optimiser's step size apart from the weights' scale (after few Adam steps it is "
              "nearly the same everywhere, and the relative change then mirrors 1 / RMS(W)).", ""]
    if analysis["comparisons"]:
        lines += [f"![modules]({plots.modules(analysis, out / 'modules.png').name})", ""]
    for name, c in analysis["comparisons"].items():
        title = f"{name} vs {c['reference']}"
        heat = plots.heatmap(c, title, out / f"heatmap_{_slug(name)}.png")
        bars = plots.top_k(c, title, out / f"topk_{_slug(name)}.png")
        lines += [f"## {title}", "", f"`{c['adapted']}` against `{c['base']}`: {len(c['tensors'])} tensors, "
                  f"total ||ΔW|| = {_fmt(c['total']['delta_norm'])}, ||ΔW||/||W|| = {_fmt(c['total']['relative'])}.", ""]
        rows = [[m, v["tensors"], v["delta_norm"], v["relative"], v["rms_delta"]] for m in MODULE_ORDER if (v := c["modules"].get(m))]
        lines += markdown_table(["module", "tensors", "‖ΔW‖", "‖ΔW‖/‖W‖", "RMS ΔW per value"], rows) + [""]
        layers = sorted(c["layers"].items(), key=lambda kv: int(kv[0]))
        lines += markdown_table(["layer", "‖ΔW‖", "‖ΔW‖/‖W‖"], [[k, v["delta_norm"], v["relative"]] for k, v in layers]) + [""]
        ranked = sorted(c["tensors"], key=lambda t: -t["relative"])[:top]
        lines += [f"Top {len(ranked)} tensors:", ""]
        lines += markdown_table(["tensor", "shape", "‖ΔW‖", "‖ΔW‖/‖W‖"], [[t["name"], "×".join(map(str, t["shape"])), t["delta_norm"], t["relative"]] for t in ranked]) + [""]
        for tensor, ext in c["extended_vocabulary"].items():
            lines += [f"Extended vocabulary in `{tensor}`: {ext['rows']} new rows beside {ext['shared_rows']} shared "
                      f"(shared rows are in the tables above); new rows' RMS row norm {_fmt(ext['rms_row_norm'])} vs "
                      f"base {_fmt(ext['base_rms_row_norm'])}.", ""]
        for key, label in (("tied_counted_once", "tied to the embedding, counted once"), ("only_in_adapted", "only in the adapted model"), ("only_in_base", "only in the base model")):
            if c[key]:
                lines += [f"Tensors {label}: " + ", ".join(f"`{n}`" for n in c[key]), ""]
        lines += [f"![heatmap]({heat.name})", "", f"![top tensors]({bars.name})", ""]
    if analysis["correlations"]:
        lines += ["## Correlation of change profiles", "", "Over the per-tensor relative changes (log10) both comparisons share.", ""]
        rows = []
        for pair, r in analysis["correlations"].items():
            a, b = pair.split("~")
            png = plots.correlation(analysis["comparisons"][a], analysis["comparisons"][b], (a, b), out / f"correlation_{_slug(a)}_{_slug(b)}.png")
            rows.append([f"{a} vs {b}", r["tensors"], r["pearson_log"], r["spearman"], f"![]({png.name})"])
        lines += markdown_table(["pair", "tensors", "Pearson (log)", "Spearman", "plot"], rows) + [""]
    (out / "report.md").write_text("\n".join(lines), encoding="utf-8")
    return out / "report.md"


def metrics_report(metrics: dict, out: str | Path, significance: dict | None = None, phrasings: dict | None = None,
                   reference_floor: dict | None = None) -> Path:
    """metrics.json and report.md for {model: {set: {...}}} (and optional paired tests per set, chrF per
    prompt phrasing: {model: {set: {"chrf": {index: chrF}, "mean", "stdev", "min", "max"}}}, and the
    reference floor per reference file: {name: {"chrf", "lines", "derangement"}})."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_json({"models": metrics, "significance": significance or {}, "phrasings": phrasings or {},
                "reference_floor": reference_floor or {}}, out / "metrics.json")
    lines = ["# Evaluation", ""]
    ppl = [[m, s, v["perplexity"], v["bits_per_byte"], v["tokens"], v["bytes"], v["documents"]]
           for m, sets in metrics.items() for s, v in sets.items() if "perplexity" in v]
    if ppl:
        lines += ["## Perplexity", "", "Token-weighted over every predicted token; bits per byte of the normalised text.", ""]
        lines += markdown_table(["model", "set", "perplexity", "bits/byte", "tokens", "bytes", "documents"], ppl) + [""]
        png = plots.metric_bars(metrics, ("bits_per_byte",), out / "bits_per_byte.png", "bits per byte (lower is better)")
        lines += [f"![bits per byte]({png.name})", ""]
    mt = []
    for m, sets in metrics.items():
        for s, v in sets.items():
            if "bleu_syllable" in v:
                mt.append([m, s] + [_interval(v, k) for k in METRIC_COLUMNS] + [v["lines"]])
    if mt:
        lines += ["## Translation", "", "BLEU on syllable-segmented Tibetan (tokenize=none), sacrebleu default BLEU (13a), "
                  "chrF on normalised text, chrF++ with syllables as words; [95% bootstrap interval].", ""]
        lines += markdown_table(["model", "set", "BLEU (syllable)", "BLEU (13a)", "chrF", "chrF++", "lines"], mt) + [""]
        dependence = [[m, s, f"{v['chrf']:.2f}", f"{v['chrf_deranged']:.2f}", _interval(v, "source_dependence"),
                       _fmt(v.get("source_dependence_p_value"), 3), _fmt(v.get("source_dependence_length_only"), 2),
                       _interval(v, "source_dependence_beyond_length") if "source_dependence_beyond_length" in v else "–",
                       _fmt(v.get("source_dependence_beyond_length_p_value"), 3),
                       _interval(v, "source_dependence_tibetan") if "source_dependence_tibetan" in v else "–",
                       f"{v['length_ratio']:.2f}"]
                      for m, sets in metrics.items() for s, v in sets.items() if "source_dependence" in v]
        if dependence:
            floors = "; ".join(f"{name}: chrF {f['chrf']:.2f} on {f['lines']} lines" for name, f in (reference_floor or {}).items())
            lines += ["### Does the output follow its source?", "",
                      "chrF against each line's own reference and against another line's (line i scored against the "
                      "reference of line i + n/2 mod n); their difference, the source dependence, is about 0 for output "
                      "that ignores its source, whatever its chrF [95% paired bootstrap interval; one-sided p]. Length "
                      "alone earns some: scoring each reference against the output next in length (the same model, another "
                      "source) splits it into what the lengths give and what the content adds ('beyond length'); 'in Tibetan' "
                      "scores the outputs' Tibetan runs alone (copied digits and names follow a source without translating it). "
                      + (f"The reference floor, the references scored the same way: {floors}." if floors else ""), ""]
            lines += markdown_table(["model", "set", "chrF", "chrF vs other lines", "source dependence", "p", "length only",
                                     "beyond length", "p", "in Tibetan", "length / ref"], dependence) + [""]
        png = plots.metric_bars(metrics, METRIC_COLUMNS, out / "translation.png", "score (95% bootstrap interval)")
        lines += [f"![translation]({png.name})", ""]
    spread = [[m, s, v["mean"], v["stdev"], v["min"], v["max"], " ".join(f"{k}:{c:.2f}" for k, c in v["chrf"].items())]
              for m, sets in (phrasings or {}).items() for s, v in sets.items()]
    if spread:
        lines += ["## chrF per prompt phrasing", "", "The same sources asked in each trained phrasing "
                  "(megatron_tibetan.data.prompts); a model that depends on the wording spreads widely.", ""]
        lines += markdown_table(["model", "set", "mean", "std", "min", "max", "phrasing:chrF"], spread) + [""]
    for set_name, by_metric in (significance or {}).items():
        lines += [f"### Paired bootstrap: {set_name}", "", "p-value of the difference to the first system (sacrebleu, paired bootstrap).", ""]
        systems = list(next(iter(by_metric.values())))
        rows = [[s] + [f"{by_metric[k][s]['score']:.2f} (p={_fmt(by_metric[k][s]['p_value'], 3)})" for k in METRIC_COLUMNS] for s in systems]
        lines += markdown_table(["system", *METRIC_COLUMNS], rows) + [""]
    (out / "report.md").write_text("\n".join(lines), encoding="utf-8")
    return out / "report.md"


def _interval(v: dict, key: str) -> str:
    ci = v.get(f"{key}_ci95")
    return f"{v[key]:.2f}" + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "")
