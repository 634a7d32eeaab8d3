"""Translation metrics that are right for Tibetan, computed by sacrebleu.

Tibetan writes no spaces between words, so sacrebleu's default tokeniser sees a whole clause as one
"word" and BLEU collapses towards zero. Hypothesis and reference are normalised the same way
(:func:`megatron_tibetan.text.normalize`) and then viewed two ways:

- ``bleu_syllable``: BLEU on syllable-segmented text (:func:`segment_for_bleu`; tsheg and space separate,
  shads are tokens), ``tokenize='none'``. The number to read.
- ``bleu_default``: BLEU with sacrebleu's default tokeniser (13a), for comparison with published numbers.
- ``chrf``: chrF on the normalised text (character n-grams; sacrebleu ignores whitespace).
- ``chrf_pp``: chrF++ on the syllable-segmented text, so its word n-grams are syllables.

Each comes with sacrebleu's 95% bootstrap interval; :func:`paired_bootstrap` runs sacrebleu's paired
bootstrap test between systems.
"""

from __future__ import annotations

from typing import Callable, Sequence

from sacrebleu.metrics import BLEU, CHRF
from sacrebleu.significance import PairedTest

from megatron_tibetan.text import normalize, segment_for_bleu


def syllable_view(text: str) -> str:
    return segment_for_bleu(normalize(text))


class _CHRF(CHRF):
    """sacrebleu's chrF, its scores always Python floats.

    sacrebleu returns a plain 0.0 for a bootstrap resample that shares no n-gram with the reference and
    a numpy float32 otherwise; its interval code (``statistics.mean``) then refuses the mix with a
    TypeError. That happens exactly on the poor translations an untrained model produces.
    """

    def _compute_f_score(self, statistics) -> float:
        return float(super()._compute_f_score(statistics))


# metric key -> (sacrebleu metric factory, how hypothesis and reference are viewed)
METRICS: dict[str, tuple[Callable, Callable[[str], str]]] = {
    "bleu_syllable": (lambda: BLEU(tokenize="none"), syllable_view),
    "bleu_default": (lambda: BLEU(), normalize),
    "chrf": (lambda: _CHRF(), normalize),
    "chrf_pp": (lambda: _CHRF(word_order=2), syllable_view),
}


def _interval(mean: float, half_width: float) -> list[float]:
    """sacrebleu's 95% interval (bootstrap mean ± half the 2.5–97.5 percentile range), kept within [0, 100]."""
    return [max(0.0, float(mean - half_width)), min(100.0, float(mean + half_width))]


def _check(hyps: Sequence[str], refs: Sequence[str], where: str) -> None:
    if len(hyps) != len(refs):
        raise ValueError(f"{where}: {len(hyps)} hypothesis lines but {len(refs)} reference lines (must be line-aligned)")
    if not refs:
        raise ValueError(f"{where}: no lines to score")


def score(hyps: Sequence[str], refs: Sequence[str], n_bootstrap: int = 1000, where: str = "translations") -> dict:
    """{key: score, key_ci95: [low, high], ..., signatures: {key: sacrebleu signature}, lines: n}."""
    _check(hyps, refs, where)
    out: dict = {"lines": len(refs), "signatures": {}}
    for key, (make, view) in METRICS.items():
        metric = make()
        result = metric.corpus_score([view(h) for h in hyps], [[view(r) for r in refs]], n_bootstrap=n_bootstrap)
        out[key] = result.score
        if n_bootstrap > 1:
            out[f"{key}_ci95"] = _interval(result._mean, result._ci)
        out["signatures"][key] = str(metric.get_signature())
    return out


def paired_bootstrap(systems: dict[str, Sequence[str]], refs: Sequence[str], n_samples: int = 1000) -> dict:
    """sacrebleu's paired bootstrap test of every system against the first (the baseline).

    Returns {metric key: {system: {score, p_value, mean, ci95}}}; the baseline has p_value None.
    """
    if len(systems) < 2:
        raise ValueError("paired bootstrap needs at least two systems")
    for name, hyps in systems.items():
        _check(hyps, refs, f"system {name!r}")
    out = {}
    for key, (make, view) in METRICS.items():
        named = [(name, [view(h) for h in hyps]) for name, hyps in systems.items()]
        test = PairedTest(named, {key: make()}, [[view(r) for r in refs]], test_type="bs", n_samples=n_samples)
        _, scores = test()
        results = next(v for k, v in scores.items() if k != "System")
        out[key] = {
            name: {"score": float(r.score), "p_value": None if r.p_value is None else float(r.p_value),
                   "mean": float(r.mean), "ci95": _interval(r.mean, r.ci)}
            for name, r in zip(scores["System"], results)
        }
    return out
