"""The study's report: ``OUT/report.md`` (tables, PNG plots, the commands) and ``OUT/report.json`` (every number).

Read from what the stages wrote: the fertility JSON of both tokenizers, the evaluation runs' ``metrics.json``
(bits per byte; translation scores with sacrebleu's bootstrap intervals and paired tests, ``cpt_sft`` being
the first system so every other arm is tested against it), the hypothesis files, the training logs
(``metrics.jsonl``), the layer analyses and the stage records (time, CPU time, peak memory, load).

report.json::

    {"seconds": total wall seconds of the stages, "tokenizer": {...fertility...},
     "models": {ARM: {"bits_per_byte": x, "zh-bo": {"chrf": x, "chrf_ci95": [lo, hi], "bleu_syllable": x,
                                                    "bleu_syllable_ci95": [lo, hi], "hyp": PATH, ...},
                      "en-bo": {...}}},
     "references": {"zh-bo": PATH, "en-bo": PATH}, "significance": ..., "stages": [...], ...}

for ARM in base, cpt, sft, cpt_sft. The chrF of a hypothesis file is sacrebleu's chrF of
``text.normalize`` of each line against the same normalisation of the reference.
"""

from __future__ import annotations

import json
import math
import os
import statistics
from pathlib import Path
from typing import Callable

import numpy as np

from megatron_tibetan.evaluation import plots
from megatron_tibetan.evaluation.report import markdown_table, write_json
from megatron_tibetan.evaluation.run import hyp_path
from megatron_tibetan.text import normalize, tibetan_ratio
from megatron_tibetan.text.readers import read_lines

# the study's arms and translation directions, defined once (megatron_tibetan.study's recipe reads them here)
ARMS = ("base", "cpt", "sft", "cpt_sft")
SOURCE_LANGS = ("zh", "en")
DIRECTIONS = tuple(f"{lang}-bo" for lang in SOURCE_LANGS)
ARM_TEXT = {
    "base": "SmolLM2-135M-Instruct as released, with its own tokenizer",
    "init": "the imported model with the extended vocabulary (sub-token-mean rows), untrained",
    "cpt": "stage 1 only: continual pretraining on Tibetan",
    "sft": "stage 2 only: SFT from the imported base (the single-stage ablation)",
    "cpt_sft": "both stages: CPT, then SFT",
}
LANG = {"zh-bo": "zh→bo", "en-bo": "en→bo"}
# whether an output follows its source (evaluation.metrics.source_dependence), per arm and direction
SOURCE_DEPENDENCE = ("chrf_deranged", "source_dependence", "source_dependence_ci95", "source_dependence_p_value",
                     "source_dependence_length_only", "source_dependence_beyond_length",
                     "source_dependence_beyond_length_ci95", "source_dependence_beyond_length_p_value",
                     "source_dependence_tibetan", "source_dependence_tibetan_ci95", "source_dependence_tibetan_p_value")
# published chrF into Tibetan, with the split each was measured on (ours is FLORES-200 dev: not the same lines)
PUBLISHED = (
    ("en-bo", "NLLB-200 1.3B", 32.4, "FLORES-200 devtest"),
    ("en-bo", "NLLB-200 distilled 600M", 30.8, "FLORES-200 devtest"),
    ("en-bo", "OPUS-MT (best)", 21.2, "FLORES-200 devtest"),
    ("zh-bo", "OPUS-MT", 13.8, "FLORES-200 devtest"),
    ("zh-bo", "the study's paper (arXiv 2512.03976)", 6.6, "its in-house test set"),
)


def _load(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(x) for x in Path(path).read_text().splitlines() if x.strip()]


def busy_seconds(records: list[dict]) -> float:
    """Wall seconds during which at least one stage ran (stages side by side counted once, the gaps between
    reruns not at all): the study's total time when it ran in one go."""
    total, end = 0.0, -math.inf
    for start, finish in sorted((r.get("started", r["finished"] - r["seconds"]), r["finished"]) for r in records):
        total += max(0.0, finish - max(start, end))
        end = max(end, finish)
    return total


def _fertility(path: Path) -> dict:
    data = _load(path)
    by_lang = {}
    for f in data["files"]:
        lang = Path(f["file"]).suffix.lstrip(".")
        by_lang[lang] = {k: f[k] for k in ("lines", "tokens", "bytes", "chars", "syllables", "tokens_per_syllable",
                                           "tokens_per_char", "bytes_per_token")}
    return {"tokenizer": data["tokenizer"], "vocab_size": data["vocab_size"], **by_lang}


def _training(path: Path) -> dict:
    rows = [r for r in _jsonl(path) if r.get("split", "train") == "train" and "loss" in r]
    times = [r["step_time_s"] for r in rows if "step_time_s" in r]
    rates = [r["tokens_per_s"] for r in rows if "tokens_per_s" in r]
    return {"steps": len(rows), "loss": [r["loss"] for r in rows], "loss_first": rows[0]["loss"], "loss_last": rows[-1]["loss"],
            "step_seconds_median": statistics.median(times) if times else None,
            "tokens_per_second_median": statistics.median(rates) if rates else None}


def _fmt_ci(value: float, ci: list[float] | None) -> str:
    return f"{value:.2f}" + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "")


def _conclusion(delta: float, p: float | None, half_width: float, lines: int) -> str:
    """One honest sentence on what a paired test over ``lines`` sentences allows one to say."""
    if p is None:
        return "no p-value"
    if delta == 0:
        return f"both arms score the same on these {lines} sentences: there is no difference to test"
    if p < 0.05:
        return (f"the difference ({delta:+.2f}) is unlikely to be resampling noise on these {lines} sentences (p = {p:.3f}); "
                "it says nothing yet about other text or about longer training")
    return (f"the difference ({delta:+.2f}) is within what resampling these {lines} sentences produces (p = {p:.3f}): "
            f"this run cannot tell the two arms apart — differences smaller than about ±{half_width:.1f} chrF are "
            "invisible at this sample size — which is no evidence that CPT does not help")


def _bar_plot(values: dict[str, dict[str, dict]], keys: tuple[str, ...], path: Path, ylabel: str) -> str | None:
    written = plots.metric_bars(values, keys, path, ylabel)
    return written.name if written else None


def _fertility_plot(tok: dict, path: Path) -> str:
    import matplotlib.pyplot as plt

    labels = ["bo tokens/syllable", "bo tokens/char", "zh tokens/char", "en tokens/char"]
    keys = [("bo", "tokens_per_syllable"), ("bo", "tokens_per_char"), ("zh", "tokens_per_char"), ("en", "tokens_per_char")]
    fig, ax = plt.subplots(figsize=(6.5, 3.5))
    for i, which in enumerate(("base", "extended")):
        vals = [tok[which][lang][k] for lang, k in keys]
        ax.bar(np.arange(len(keys)) + 0.4 * i, vals, 0.4, label=f"{which} ({tok[which]['vocab_size']:,} tokens)")
    ax.set_xticks(np.arange(len(keys)) + 0.2, labels, fontsize=8)
    ax.set_ylabel("tokens (FLORES-200 dev)")
    ax.legend(fontsize=8)
    plots.save(fig, path)
    return path.name


def _training_plot(training: dict, path: Path) -> str:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 3.5))
    for name, t in training.items():
        ax.plot(range(1, len(t["loss"]) + 1), t["loss"], marker=".", label=name)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss per trained token")
    ax.legend(fontsize=8)
    plots.save(fig, path)
    return path.name


def _token_counts(spec, lines: list[str]) -> list[int]:
    from megatron_tibetan.tokenizer.base import load_tokenizer

    tok = load_tokenizer(str(spec))
    return [len(ids) for ids in tok([normalize(x) for x in lines], add_special_tokens=False)["input_ids"]]


def _by_lang(sets: dict) -> dict:
    """An arm's perplexity sets by language (named after their files: flores200.dev.zh -> zh); ``bo`` is the
    Tibetan one (the only set of a run that scored one file)."""
    by_lang = {Path(name).suffix.lstrip("."): v for name, v in sets.items()}
    return {"bo": by_lang.get("bo", next(iter(sets.values()))), **by_lang}


def _bits_per_byte(sets: dict) -> dict:
    """An arm's bits per byte and perplexity on the Tibetan set, and ``bits_per_byte_zh``/``_en`` on the base
    model's languages where they were scored."""
    by_lang = _by_lang(sets)
    bo = by_lang["bo"]
    return {"bits_per_byte": bo["bits_per_byte"], "perplexity": bo["perplexity"],
            **{f"bits_per_byte_{lang}": by_lang[lang]["bits_per_byte"] for lang in SOURCE_LANGS if lang in by_lang}}


def _arm_scores(arm: str, bpb: dict, translation: dict[str, Path], tr: dict, show: Callable) -> dict:
    """One arm's row of report.json's ``models``: bits per byte (Tibetan, and zh/en where scored), and per
    direction the scores with their intervals, the hypothesis file and its Tibetan share."""
    entry = {"description": ARM_TEXT[arm], **_bits_per_byte(bpb)}
    for d in DIRECTIONS:
        m = tr[d]["models"][arm][f"{d}.greedy"]
        hyp = hyp_path(Path(translation[d]).parent, arm, f"{d}.greedy")
        hyps = read_lines(hyp)
        entry[d] = {"chrf": m["chrf"], "chrf_ci95": m["chrf_ci95"], "bleu_syllable": m["bleu_syllable"],
                    "bleu_syllable_ci95": m["bleu_syllable_ci95"], "chrf_pp": m["chrf_pp"], "bleu_default": m["bleu_default"],
                    "lines": m["lines"], "hyp": show(hyp), "tibetan_share": tibetan_ratio("\n".join(hyps)),
                    "length_ratio": m.get("length_ratio"), "max_length_ratio": m.get("max_length_ratio"),
                    "seconds": m.get("seconds"), "cpu_seconds": m.get("cpu_seconds"),
                    "signature_chrf": m["signatures"]["chrf"],
                    **{k: m[k] for k in SOURCE_DEPENDENCE if k in m}}
    return entry


def _significance(tr: dict) -> dict:
    """cpt_sft against each other arm, per direction: both scores, their difference and the paired p-value."""
    significance: dict = {}
    for d in DIRECTIONS:
        sig = tr[d]["significance"][f"{d}.greedy"]
        significance[d] = {}
        for other in ("sft", "base", "cpt"):
            significance[d][f"cpt_sft_vs_{other}"] = {
                k: {"cpt_sft": sig[k]["cpt_sft"]["score"], other: sig[k][other]["score"],
                    "delta": sig[k]["cpt_sft"]["score"] - sig[k][other]["score"], "p_value": sig[k][other]["p_value"]}
                for k in ("chrf", "bleu_syllable")}
    return significance


def _vocabulary(tok: dict, size: dict, models: dict, training: dict, ref_tokens: dict, lines_n: int) -> dict:
    """What the extended vocabulary changes, measured: sequence lengths, training and generation cost."""
    cap = size["max_new_tokens"]
    cpt_tokens_per_step = size["cpt_global_batch"] * size["cpt_seq_length"]
    bytes_per_token = {w: tok[w]["bo"]["bytes_per_token"] for w in ("base", "extended")}
    gen = {arm: {d: {"seconds_per_line": models[arm][d]["seconds"] / lines_n if models[arm][d]["seconds"] else None}
                 for d in DIRECTIONS} for arm in ARMS}
    return {
        "used": "extended",
        "new_tokens": tok["extended"]["vocab_size"] - tok["base"]["vocab_size"],
        "bo_tokens_per_char": {w: tok[w]["bo"]["tokens_per_char"] for w in ("base", "extended")},
        "bo_tokens_per_syllable": {w: tok[w]["bo"]["tokens_per_syllable"] for w in ("base", "extended")},
        "sequence_length_ratio": tok["base"]["bo"]["tokens"] / tok["extended"]["bo"]["tokens"],
        "reference_tokens_per_line": {w: sum(v) / len(v) for w, v in ref_tokens.items()},
        "reference_lines_within_cap": {w: sum(n <= cap for n in v) / len(v) for w, v in ref_tokens.items()},
        "max_new_tokens": cap,
        "cpt_step_seconds_median": training["cpt"]["step_seconds_median"],
        "cpt_tokens_per_step": cpt_tokens_per_step,
        "cpt_tibetan_bytes_per_step": {w: cpt_tokens_per_step * b for w, b in bytes_per_token.items()},
        "generation_seconds_per_line": gen,
    }


def _checks(models: dict, init_bpb: float) -> dict:
    return {
        "bits_per_byte_falls_with_cpt": models["cpt"]["bits_per_byte"] < min(models["base"]["bits_per_byte"], init_bpb),
        "cpt_sft_chrf_above_base": {d: models["cpt_sft"][d]["chrf"] > models["base"][d]["chrf"] for d in DIRECTIONS},
        "cpt_sft_chrf_interval_above_base": {d: models["cpt_sft"][d]["chrf_ci95"][0] > models["base"][d]["chrf_ci95"][1]
                                             for d in DIRECTIONS},
    }


def _layer_summary(layers: dict[str, Path], out: Path, show: Callable) -> tuple[dict, dict]:
    """Per comparison of the layer analyses: the total relative change and the module that moved most;
    and the heatmaps, relative to ``out``."""
    summary, heatmaps = {}, {}
    for folder in layers.values():
        analysis = _load(Path(folder) / "analysis.json")
        for arm, c in analysis["comparisons"].items():
            top = max(c["modules"].items(), key=lambda kv: kv[1]["relative"])
            key = f"{arm} vs {c['reference']}"
            png = Path(folder) / f"heatmap_{arm}.png"
            summary[key] = {"relative": c["total"]["relative"], "top_module": top[0],
                            "top_module_relative": top[1]["relative"], "heatmap": show(png)}
            heatmaps[key] = os.path.relpath(png, out)
    return summary, heatmaps


def _plots(data: dict, training: dict, out: Path) -> dict[str, str]:
    """The report's PNG figures, by name: bits per byte, translation, fertility, training loss."""
    models = data["models"]
    return {
        "bpb": _bar_plot({a: {"FLORES dev bo": {"bits_per_byte": v["bits_per_byte"]}}
                          for a, v in [("base", models["base"]), ("init", data["init"])] + [(a, models[a]) for a in ARMS[1:]]},
                         ("bits_per_byte",), out / "bits_per_byte.png", "bits per byte (lower is better)"),
        "translation": _bar_plot({a: {LANG[d]: models[a][d] for d in DIRECTIONS} for a in ARMS}, ("chrf", "bleu_syllable"),
                                 out / "translation.png", "score [95% bootstrap interval]"),
        "fertility": _fertility_plot(data["tokenizer"], out / "fertility.png"),
        "training": _training_plot(training, out / "training_loss.png"),
    }


def _summary_lines(data: dict, lines_n: int) -> list[str]:
    """What the terminal shows at the end of a run."""
    models, vocabulary, significance = data["models"], data["vocabulary"], data["significance"]

    def chrf_line(d: str) -> str:
        return f"{LANG[d]} chrF: " + ", ".join(f"{a} {_fmt_ci(models[a][d]['chrf'], models[a][d]['chrf_ci95'])}" for a in ARMS)

    return [
        f"tokens per Tibetan syllable (FLORES dev bo): base {vocabulary['bo_tokens_per_syllable']['base']:.2f}, "
        f"extended {vocabulary['bo_tokens_per_syllable']['extended']:.2f}",
        f"bits per byte (first {data['bits_per_byte_set']['lines']} FLORES dev bo lines): base {models['base']['bits_per_byte']:.3f}, "
        f"init {data['init']['bits_per_byte']:.3f}, cpt {models['cpt']['bits_per_byte']:.3f}, "
        f"sft {models['sft']['bits_per_byte']:.3f}, cpt_sft {models['cpt_sft']['bits_per_byte']:.3f}",
        chrf_line("zh-bo"), chrf_line("en-bo"),
        "cpt_sft vs sft, chrF: " + "; ".join(
            f"{LANG[d]} {significance[d]['cpt_sft_vs_sft']['chrf']['delta']:+.2f} (p = {significance[d]['cpt_sft_vs_sft']['chrf']['p_value']:.3f})"
            for d in DIRECTIONS) + f", on {lines_n} sentences",
        "cpt_sft source dependence (chrF, own reference minus another line's): " + "; ".join(
            _dependence_summary(models["cpt_sft"][d], LANG[d], (data.get("reference_floor") or {}).get(d)) for d in DIRECTIONS),
    ]


def _dependence_summary(m: dict, direction: str, floor: dict | None) -> str:
    text = f"{direction} {m['source_dependence']:+.2f}"
    if "source_dependence_p_value" in m:
        text += f" (p = {m['source_dependence_p_value']:.3f})"
    if "source_dependence_beyond_length" in m:
        text += f", beyond length {m['source_dependence_beyond_length']:+.2f}"
        if "source_dependence_beyond_length_p_value" in m:
            text += f" (p = {m['source_dependence_beyond_length_p_value']:.3f})"
    if "source_dependence_tibetan" in m:
        text += f", in Tibetan {m['source_dependence_tibetan']:+.2f}"
        if "source_dependence_tibetan_p_value" in m:
            text += f" (p = {m['source_dependence_tibetan_p_value']:.3f})"
    return text + (f", floor {floor['chrf']:.1f}" if floor else "")


def write_report(out: Path, size: dict, records: list[dict], seconds_this_run: float, fertility: dict[str, Path],
                 bpb: Path, translation: dict[str, Path], references: dict[str, Path], training_logs: dict[str, Path],
                 layers: dict[str, Path], sft_stats: Path, cpt_stats: Path, tokenizers: dict, show: Callable[[Path], str] = str,
                 phrasings: Path | None = None) -> list[str]:
    """Write OUT/report.md, OUT/report.json and the PNG plots; return the summary lines for the terminal."""
    out = Path(out)
    tok = {w: _fertility(p) for w, p in fertility.items()}
    bpb_sets = _load(bpb)["models"]
    bo_set = {m: _by_lang(sets)["bo"] for m, sets in bpb_sets.items()}
    tr = {d: _load(translation[d]) for d in DIRECTIONS}
    ref_lines = {d: read_lines(references[d]) for d in DIRECTIONS}
    lines_n = len(ref_lines["zh-bo"])
    models = {arm: _arm_scores(arm, bpb_sets[arm], translation, tr, show) for arm in ARMS}
    training = {arm: _training(p) for arm, p in training_logs.items()}
    ref_tokens = {w: _token_counts(tokenizers[w], ref_lines["zh-bo"]) for w in ("base", "extended")}
    layer_summary, heatmaps = _layer_summary(layers, out, show)
    data = {
        "seconds": round(busy_seconds(records), 1),
        "cpu_seconds": round(sum(r["cpu_seconds"] for r in records), 1),
        "seconds_this_run": round(seconds_this_run, 1),
        "size": size,
        "tokenizer": tok,
        "vocabulary": _vocabulary(tok, size, models, training, ref_tokens, lines_n),
        "models": models,
        "init": {"description": ARM_TEXT["init"], **_bits_per_byte(bpb_sets["init"])},
        "bits_per_byte_set": {"lines": bo_set["base"]["documents"], "bytes": bo_set["base"]["bytes"]},
        "references": {d: show(references[d]) for d in DIRECTIONS},
        "reference_tibetan_share": {d: tibetan_ratio("\n".join(ref_lines[d])) for d in DIRECTIONS},
        "reference_floor": {d: next(iter(tr[d].get("reference_floor", {}).values()), None) for d in DIRECTIONS},
        "significance": _significance(tr),
        "phrasings": _load(phrasings)["phrasings"].get("cpt_sft", {}) if phrasings else {},
        "training": {arm: {k: v for k, v in t.items() if k != "loss"} | {"loss": t["loss"]} for arm, t in training.items()},
        "data": {"cpt": _load(cpt_stats), "sft": _load(sft_stats)},
        "layers": layer_summary,
        "checks": _checks(models, bo_set["init"]["bits_per_byte"]),
        "stages": records,
    }
    write_json(data, out / "report.json")
    figures = _plots(data, training, out)
    md = _markdown(data, size, records, figures, lines_n, heatmaps)
    (out / "report.md").write_text("\n".join(md) + "\n", encoding="utf-8")
    return _summary_lines(data, lines_n)


def _chrf_half_width(models: dict) -> dict[str, float]:
    """Per direction, the mean half width of the arms' chrF intervals."""
    return {d: statistics.mean((models[a][d]["chrf_ci95"][1] - models[a][d]["chrf_ci95"][0]) / 2 for a in ARMS)
            for d in DIRECTIONS}


def _markdown(data: dict, size: dict, records: list[dict], figures: dict[str, str], lines_n: int,
              heatmaps: dict[str, str]) -> list[str]:
    """report.md, section by section."""
    return (_md_arms(data, size) + _md_vocabulary(data, size, figures) + _md_bits_per_byte(data, figures)
            + _md_translation(data, size, figures, lines_n) + _md_training(data, size, figures)
            + _md_layers(data, heatmaps) + _md_commands(records))


def _md_arms(data: dict, size: dict) -> list[str]:
    models, voc = data["models"], data["vocabulary"]
    total_min = data["seconds"] / 60
    md = [
        "# Tibetan adaptation of SmolLM2-135M: the two-stage study" + (" (tiny: random model)" if size["tiny_model"] else ""),
        "",
        f"Stages took {total_min:.1f} min in all ({data['cpu_seconds'] / 60:.1f} CPU-min; this run {data['seconds_this_run'] / 60:.1f} min, "
        "stages done in an earlier run being skipped). Every number below was computed by this run; report.json has them all.",
        "",
        "## Arms",
        "",
    ]
    md += [f"- `{a}`: {ARM_TEXT[a]}." for a in ("base", "cpt", "sft", "cpt_sft")]
    md += [f"- `init` (bits per byte only): {ARM_TEXT['init']}.", ""]
    md += [
        "`sft` and `cpt_sft` are fine-tuned with the same data, steps, schedule and seed; they differ only in the "
        "checkpoint they start from, so their difference is what the first stage adds.",
        "",
        "**What is fair to `base`.** `base` is the model a user starts from, with its own tokenizer. Bits per byte "
        "is tokenizer-independent (nats per UTF-8 byte of the same normalised text), so every row of that table is "
        "comparable; `init` separates what the larger vocabulary and its sub-token-mean rows give from what CPT "
        f"then learns. For translation every arm gets the same prompt (the first SFT phrasing, chat template) and the same "
        f"limits: {_length_limit(models)}at most {voc['max_new_tokens']} new tokens. With SmolLM2's own tokenizer the token "
        "limit holds less Tibetan: the "
        f"reference lines need {voc['reference_tokens_per_line']['base']:.0f} tokens on average with it against "
        f"{voc['reference_tokens_per_line']['extended']:.0f} with the extended one ({voc['reference_lines_within_cap']['base']:.0%} "
        f"vs {voc['reference_lines_within_cap']['extended']:.0%} of the lines fit the budget). The Tibetan share of `base`'s "
        f"output (below: zh→bo {models['base']['zh-bo']['tibetan_share']:.0%}, en→bo {models['base']['en-bo']['tibetan_share']:.0%}) "
        "shows whether a longer budget could have helped it: a model that does not write Tibetan cannot gain chrF "
        "from more tokens.",
        "",
    ]
    return md


def _length_limit(models: dict) -> str:
    """The length limit set by the source, in words, or '' when the run had none."""
    ratios = {d: models["cpt_sft"][d].get("max_length_ratio") for d in DIRECTIONS}
    if not all(ratios.values()):
        return ""
    return ("each output stops at " + " and ".join(f"{r:g} characters per source character ({LANG[d]})" for d, r in ratios.items())
            + ", the 99th percentile of the SFT pairs' own length ratio, and ")


def _md_vocabulary(data: dict, size: dict, figures: dict[str, str]) -> list[str]:
    voc, tok = data["vocabulary"], data["tokenizer"]
    md = ["## Vocabulary: extended, measured", ""]
    fb, fe = tok["base"], tok["extended"]
    md += markdown_table(["tokenizer", "vocabulary", "bo tokens/syllable", "bo tokens/char", "bo bytes/token", "zh tokens/char", "en tokens/char"],
                 [[w, f"{t['vocab_size']:,}", f"{t['bo']['tokens_per_syllable']:.3f}", f"{t['bo']['tokens_per_char']:.3f}",
                   f"{t['bo']['bytes_per_token']:.2f}", f"{t['zh']['tokens_per_char']:.3f}", f"{t['en']['tokens_per_char']:.3f}"]
                  for w, t in (("base (SmolLM2)", fb), ("extended", fe))])
    step = voc["cpt_step_seconds_median"]
    gen = voc["generation_seconds_per_line"]
    md += [
        "",
        f"![fertility]({figures['fertility']})",
        "",
        f"The arms after `base` use the extended vocabulary ({voc['new_tokens']:,} Tibetan tokens trained on "
        f"{size['tokenizer_lines']:,} Nanhai lines; zh and en encode exactly as before). It makes Tibetan sequences "
        f"{voc['sequence_length_ratio']:.1f}× shorter on FLORES dev bo. Training cost per token is nearly the same "
        f"(the output layer grows by {voc['new_tokens']:,} of {fb['vocab_size']:,} rows), so a CPT step of "
        f"{voc['cpt_tokens_per_step']:,} tokens (median {step:.1f} s here) reads "
        f"{voc['cpt_tibetan_bytes_per_step']['extended'] / 1000:.1f} kB of Tibetan instead of "
        f"{voc['cpt_tibetan_bytes_per_step']['base'] / 1000:.1f} kB. Generation is paid per token: writing the reference "
        f"lines takes {voc['reference_tokens_per_line']['base']:.0f} steps per line with the base vocabulary and "
        f"{voc['reference_tokens_per_line']['extended']:.0f} with the extended one; measured here, greedy decoding took "
        + ", ".join(f"{a} {gen[a]['zh-bo']['seconds_per_line']:.2f} s" for a in ARMS if gen[a]["zh-bo"]["seconds_per_line"])
        + " per zh→bo line (all arms stop at the same limits, so per line they cost about the same; the base "
        "vocabulary would need a longer token limit to write the same Tibetan).",
        "",
    ]
    return md


def _md_bits_per_byte(data: dict, figures: dict[str, str]) -> list[str]:
    models = data["models"]
    md = [
        "## Bits per byte (FLORES-200 dev bo)",
        "",
        f"The first {data['bits_per_byte_set']['lines']} lines ({data['bits_per_byte_set']['bytes']:,} bytes), "
        "each line a document; lower is better.",
        "",
    ]
    langs = [lang for lang in SOURCE_LANGS if f"bits_per_byte_{lang}" in data["init"]]
    arms = [("base", models["base"]), ("init", data["init"])] + [(a, models[a]) for a in ("cpt", "sft", "cpt_sft")]
    rows = [[a, f"{v['bits_per_byte']:.3f}", f"{v['perplexity']:.2f}"] + [f"{v[f'bits_per_byte_{lang}']:.3f}" for lang in langs]
            for a, v in arms]
    md += markdown_table(["arm", "bits per byte", "perplexity per token (own tokenizer)"]
                         + [f"bits per byte, {lang} (the base's language)" for lang in langs], rows)
    if langs:
        md += ["", "zh and en are scored on the same first lines of FLORES-200 dev: a rise over `base` is what the "
               "adaptation cost the model's own languages (their tokens are unchanged by the extension).", ""]
    md += ["", f"![bits per byte]({figures['bpb']})", ""]
    return md


def _md_translation(data: dict, size: dict, figures: dict[str, str], lines_n: int) -> list[str]:
    models, sig = data["models"], data["significance"]
    half_width = _chrf_half_width(models)
    md = ["## Translation into Tibetan (FLORES-200 dev subset)", "",
           f"The first {lines_n} lines per direction; greedy decoding; chrF on normalised text and BLEU on syllables "
           "(sacrebleu), [95% bootstrap interval, 1000 resamples].", ""]
    rows = []
    for d in DIRECTIONS:
        for a in ARMS:
            m = models[a][d]
            rows.append([LANG[d], a, _fmt_ci(m["chrf"], m["chrf_ci95"]), _fmt_ci(m["bleu_syllable"], m["bleu_syllable_ci95"]),
                         f"{m['chrf_pp']:.2f}", f"{m['tibetan_share']:.0%}",
                         f"{m['length_ratio']:.2f}" if m.get("length_ratio") is not None else "–", f"`{m['hyp']}`"])
    md += markdown_table(["direction", "arm", "chrF", "BLEU (syllables)", "chrF++", "Tibetan share of output",
                          "output / reference length", "hypotheses"], rows)
    shares = data.get("reference_tibetan_share") or {}
    if shares:
        md += ["", "The references' own Tibetan share: " + ", ".join(f"{LANG[d]} {v:.0%}" for d, v in shares.items())
               + " (lengths in characters of normalised text)."]
    md += _md_source_dependence(data)
    md += _md_published(data)
    md += ["", f"![translation]({figures['translation']})", "", "### Paired significance (sacrebleu paired bootstrap, 1000 resamples)", ""]
    rows = []
    for d in DIRECTIONS:
        for other in ("sft", "base", "cpt"):
            s = sig[d][f"cpt_sft_vs_{other}"]
            rows.append([LANG[d], f"cpt_sft vs {other}",
                         f"{s['chrf']['cpt_sft']:.2f} vs {s['chrf'][other]:.2f} ({s['chrf']['delta']:+.2f}), p = {s['chrf']['p_value']:.3f}",
                         f"{s['bleu_syllable']['cpt_sft']:.2f} vs {s['bleu_syllable'][other]:.2f} "
                         f"({s['bleu_syllable']['delta']:+.2f}), p = {s['bleu_syllable']['p_value']:.3f}"])
    md += markdown_table(["direction", "comparison", "chrF", "BLEU (syllables)"], rows)
    md += ["", "**Does the first stage earn its cost?** (`cpt_sft` vs `sft`)", ""]
    for d in DIRECTIONS:
        s = sig[d]["cpt_sft_vs_sft"]["chrf"]
        md.append(f"- {LANG[d]}: {_conclusion(s['delta'], s['p_value'], half_width[d], lines_n)}.")
    md += ["", f"With {lines_n} sentences per direction the chrF intervals are about ±{max(half_width.values()):.1f} points wide; "
           f"and this demo trains for {size['cpt_iterations']} CPT and {size['sft_iterations']} SFT steps. The question is the "
           "study's to answer with the full FLORES dev set (997 lines, `--flores-lines 997`) and the cluster recipe in docs/slurm.md.", ""]
    best = max(models[a][d]["chrf"] for a in ARMS for d in DIRECTIONS)
    if best < 10:  # significance is about the difference, not about whether anything translates
        md += [f"Read the levels too: the best arm scores chrF {best:.2f} of 100, so no arm translates yet after this few "
               "steps; these differences say which arm writes more of the references' Tibetan character sequences, "
               "not which one translates better.", ""]
    if data["phrasings"]:
        md += ["### cpt_sft asked in each trained phrasing", "",
               "The same first lines of the subset, prompted in every phrasing SFT trained with (data/prompts.py; "
               "phrasing 0 is the one above). A model that depends on the wording spreads widely.", ""]
        rows = [[d.split(".")[0], v["mean"], v["stdev"], v["min"], v["max"],
                 " ".join(f"{k}:{c:.1f}" for k, c in v["chrf"].items())] for d, v in data["phrasings"].items()]
        md += markdown_table(["direction", "mean chrF", "std", "min", "max", "phrasing:chrF"], rows) + [""]
    checks = data["checks"]
    md += ["Checks: bits per byte falls with CPT (below base and init): **" + str(checks["bits_per_byte_falls_with_cpt"]).lower()
           + "**; cpt_sft's chrF above base's: " + ", ".join(f"{LANG[d]} **{str(v).lower()}**" for d, v in checks["cpt_sft_chrf_above_base"].items())
           + " (intervals apart: " + ", ".join(f"{LANG[d]} {str(v).lower()}" for d, v in checks["cpt_sft_chrf_interval_above_base"].items()) + ").", ""]
    return md


def _md_source_dependence(data: dict) -> list[str]:
    """Whether each arm's output follows its source, beside the floor unrelated Tibetan reaches."""
    models, floor = data["models"], data.get("reference_floor") or {}
    def p_value(m: dict, key: str) -> str:
        return f"{m[key]:.3f}" if key in m else "–"

    rows = [[LANG[d], a, f"{m['chrf']:.2f}", f"{m['chrf_deranged']:.2f}",
             _fmt_ci(m["source_dependence"], m.get("source_dependence_ci95")), p_value(m, "source_dependence_p_value"),
             f"{m['source_dependence_length_only']:.2f}" if "source_dependence_length_only" in m else "–",
             _fmt_ci(m["source_dependence_beyond_length"], m.get("source_dependence_beyond_length_ci95"))
             if "source_dependence_beyond_length" in m else "–", p_value(m, "source_dependence_beyond_length_p_value"),
             _fmt_ci(m["source_dependence_tibetan"], m.get("source_dependence_tibetan_ci95"))
             if "source_dependence_tibetan" in m else "–", p_value(m, "source_dependence_tibetan_p_value")]
            for d in DIRECTIONS for a in ARMS if "source_dependence" in (m := models[a][d])]
    if not rows:
        return []
    floors = ", ".join(f"{LANG[d]} {f['chrf']:.2f}" for d, f in floor.items() if f)
    return ["", "### Does the output follow its source?", "",
            "chrF against each line's own reference and against another line's (line i against the reference of "
            "line i + n/2 mod n); the difference is about 0 for output that ignores its source, whatever its chrF "
            "[95% paired bootstrap interval; one-sided p]. Length alone earns some of it (each output stops at a "
            "length set by its source): each reference scored against the output next to its own in length (the same "
            "arm, about as long, another source) splits it into what the lengths give and what the content adds "
            "('beyond length'). 'In Tibetan' is the source dependence of the outputs' Tibetan runs alone: "
            "copied digits, times and names follow the source without translating it."
            + (f" The reference floor (the references scored the same way, Tibetan unrelated to the source): {floors}."
               if floors else ""), ""] + markdown_table(
        ["direction", "arm", "chrF", "chrF vs other lines", "source dependence", "p", "length only", "beyond length", "p",
         "in Tibetan", "p"], rows)


def _md_published(data: dict) -> list[str]:
    """Published chrF into Tibetan beside this run's best arm and the floor, each with its split."""
    models, floor, n = data["models"], data.get("reference_floor") or {}, data["size"]["flores_lines"]
    rows = [[LANG[d], name, f"{chrf:.1f}", split] for d, name, chrf, split in PUBLISHED]
    for d in DIRECTIONS:
        rows.append([LANG[d], "this run: cpt_sft", f"{models['cpt_sft'][d]['chrf']:.1f}", f"FLORES-200 dev, first {n} lines"])
        if floor.get(d):
            rows.append([LANG[d], "reference floor (unrelated Tibetan)", f"{floor[d]['chrf']:.1f}", f"FLORES-200 dev, first {n} lines"])
    return ["", "### Against published levels", "",
            "chrF (sacrebleu defaults) of published systems, each on the split it was measured on; devtest and dev "
            "are different sentences, and the paper's own set is not public. Only systems above the floor write "
            "Tibetan that follows its source by chrF alone.", ""] + markdown_table(["direction", "system", "chrF", "split"], rows)


def _md_training(data: dict, size: dict, figures: dict[str, str]) -> list[str]:
    md = ["## Training", ""]
    cpt_d, sft_d = data["data"]["cpt"], data["data"]["sft"]
    md += [f"CPT data: {cpt_d['documents_out']:,} Nanhai documents, {cpt_d['tokens']:,} tokens. SFT data: "
           f"{sft_d['splits']['train']['examples']:,} NTREX-128 zh→bo and en→bo examples "
           f"({sft_d['splits']['train']['tokens']:,} tokens, {sft_d['splits']['train']['trained_tokens']:,} of them trained; "
           f"FLORES dev lines excluded: {sft_d['dropped'].get('leak_exclude', 0)} dropped), packed into {size['sft_seq_length']}-token sequences."
           + (f" Replay: {size['replay']:.0%} of the CPT samples were zh and en text (OpenPecha's zh and en sides), "
              "against forgetting the base model's languages (their bits per byte above)." if size.get("replay") else ""), ""]
    rows = [[a, t["steps"], f"{t['loss_first']:.3f}", f"{t['loss_last']:.3f}",
             f"{t['step_seconds_median']:.1f}" if t["step_seconds_median"] else "–",
             f"{t['tokens_per_second_median']:.0f}" if t["tokens_per_second_median"] else "–"] for a, t in data["training"].items()]
    md += markdown_table(["run", "steps", "first loss", "last loss", "median step (s)", "tokens/s"], rows)
    md += ["", f"![training loss]({figures['training']})", ""]
    return md


def _md_layers(data: dict, heatmaps: dict[str, str]) -> list[str]:
    md = ["## What each stage moved (layer-wise analysis)", "",
           "Relative weight change ‖ΔW‖/‖W‖ per layer and module (after a few Adam steps it mostly mirrors 1/RMS(W); "
           "see docs/evaluation.md, layer-wise analysis).", ""]
    md += markdown_table(["comparison", "‖ΔW‖/‖W‖ (all)", "largest module", "heatmap"],
                 [[k, f"{v['relative']:.2e}", f"{v['top_module']} ({v['top_module_relative']:.2e})",
                   f"![{k}]({heatmaps[k]})"]
                  for k, v in data["layers"].items()])
    return md + [""]


def _md_commands(records: list[dict]) -> list[str]:
    md = ["## The commands (each stage as a user types it)", ""]
    md += markdown_table(["#", "stage", "wall s", "CPU s", "peak MiB", "load avg", "threads", ""],
                 [[i, r["title"], f"{r['seconds']:.0f}", f"{r['cpu_seconds']:.0f}", r["peak_rss_mib"], f"{r['load_average'][1]:.1f}",
                   r.get("threads", ""), "skipped (done before)" if r.get("skipped") else ""] for i, r in enumerate(records, 1)])
    md += ["", "```"] + [f"# {i}. {r['title']}\n{r['command']}" for i, r in enumerate(records, 1)] + ["```", ""]
    return md
