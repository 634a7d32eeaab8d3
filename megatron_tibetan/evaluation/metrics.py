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

chrF alone cannot say whether an output follows its source: fluent Tibetan about something else scores
about 22 against FLORES references, because syllables, particles and the tsheg recur in every sentence.
:func:`source_dependence` scores the same hypotheses against a fixed derangement of the references (line
*i* against the reference of line *i + n/2 mod n*, almost always another article) and reports the
difference, with a paired bootstrap interval and p-value; a model that ignores its source scores about 0
there, whatever its chrF. :func:`reference_floor` is the references themselves scored that way: the chrF of
Tibetan that has nothing to do with the source.

Length alone earns some source dependence: an output whose length follows its source (a length cap does
that to a model that never stops) matches its own reference's character counts better than another's. On
the first 100 FLORES dev lines, unrelated Tibetan cut to each reference's length scores +3.1 (p = 0.005),
one syllable repeated to that length +1.0. The **length-matched swap** (:func:`length_matched_swap`) scores
each reference against the hypothesis of the line next to it in length instead: the same model's output,
about as long, for another source. It splits the source dependence in two: ``source_dependence_length_only``
(swap minus derangement: what the lengths give) and ``source_dependence_beyond_length`` (own minus swap:
what the content adds, with its paired interval and p-value). A model can follow its source without writing
any of it in Tibetan, by copying digits, times and names: ``source_dependence_tibetan`` is the source
dependence of the outputs' Tibetan runs alone (:func:`megatron_tibetan.text.tibetan_only`).
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
from sacrebleu.metrics import BLEU, CHRF
from sacrebleu.significance import PairedTest

from megatron_tibetan.text import normalize, segment_for_bleu, tibetan_only


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
    """{key: score, key_ci95: [low, high], ..., signatures: {key: sacrebleu signature}, lines: n,
    length_ratio: characters of output per character of reference}, and the source dependence of the chrF (:func:`source_dependence`) when there are at least two lines."""
    _check(hyps, refs, where)
    out: dict = {"lines": len(refs), "signatures": {}}
    for key, (make, view) in METRICS.items():
        metric = make()
        result = metric.corpus_score([view(h) for h in hyps], [[view(r) for r in refs]], n_bootstrap=n_bootstrap)
        out[key] = result.score
        if n_bootstrap > 1:
            out[f"{key}_ci95"] = _interval(result._mean, result._ci)
        out["signatures"][key] = str(metric.get_signature())
    out["length_ratio"] = sum(len(normalize(h)) for h in hyps) / max(1, sum(len(normalize(r)) for r in refs))
    if len(refs) > 1:
        out.update(source_dependence(hyps, refs, n_bootstrap))
    return out


def derangement(n: int) -> list[int]:
    """The reference each line is scored against to measure source dependence: line i -> i + n//2 (mod n),
    so a line meets another article's reference, the same one on every run."""
    if n < 2:
        raise ValueError(f"a derangement needs at least 2 lines, got {n}")
    return [(i + n // 2) % n for i in range(n)]


def _deranged(refs: Sequence[str]) -> list[str]:
    return [refs[j] for j in derangement(len(refs))]


def _chrf_stats(hyps: Sequence[str], refs: Sequence[str]) -> np.ndarray:
    """Per line, sacrebleu's chrF sufficient statistics (summed over lines they give the corpus chrF)."""
    stats = _CHRF()._extract_corpus_statistics([normalize(h) for h in hyps], [[normalize(r) for r in refs]])
    return np.asarray(stats, dtype=np.float64)


def _corpus_chrf(stats: np.ndarray) -> float:
    """The corpus chrF of the lines whose statistics are the rows of ``stats``."""
    return float(_CHRF()._compute_score_from_stats(list(stats.sum(axis=0))).score)


def length_matched_swap(hyps: Sequence[str]) -> list[int]:
    """For each line, the line whose hypothesis is next to its own in length (normalised characters, ties by
    line number): lines sorted by length swap in pairs, and an odd last three rotate. Needs 2 lines."""
    n = len(hyps)
    if n < 2:
        raise ValueError(f"a length-matched swap needs at least 2 lines, got {n}")
    order = sorted(range(n), key=lambda i: (len(normalize(hyps[i])), i))
    partner = list(range(n))
    pairs = n - 3 if n % 2 else n
    for k in range(0, pairs, 2):
        partner[order[k]], partner[order[k + 1]] = order[k + 1], order[k]
    if n % 2:
        a, b, c = order[-3:]
        partner[a], partner[b], partner[c] = b, c, a
    return partner


def _dependence(own: np.ndarray, deranged: np.ndarray, rows=slice(None)) -> float:
    return _corpus_chrf(own[rows]) - _corpus_chrf(deranged[rows])


def _bootstrap(out: dict, key: str, diffs: np.ndarray) -> None:
    """``key_ci95`` (2.5 and 97.5 percentiles) and ``key_p_value`` (one-sided, that it is not above 0)."""
    out[f"{key}_ci95"] = [float(np.percentile(diffs, 2.5)), float(np.percentile(diffs, 97.5))]
    out[f"{key}_p_value"] = float((1 + np.sum(diffs <= 0)) / (1 + len(diffs)))


def source_dependence(hyps: Sequence[str], refs: Sequence[str], n_bootstrap: int = 1000, seed: int = 12345) -> dict:
    """chrF of ``hyps`` against their own references minus against the deranged ones (:func:`derangement`).

    Returns ``chrf_deranged``, ``source_dependence`` and, from the length-matched swap
    (:func:`length_matched_swap`), ``chrf_length_matched``, ``source_dependence_length_only`` (swap minus
    derangement) and ``source_dependence_beyond_length`` (own minus swap); they add up to the source
    dependence; ``source_dependence_tibetan``, the same of the hypotheses' Tibetan runs alone. With
    ``n_bootstrap > 1`` these three get their paired bootstrap ``_ci95`` and one-sided ``_p_value`` (the
    same resampled lines score every term)."""
    _check(hyps, refs, "source dependence")
    own, deranged = _chrf_stats(hyps, refs), _chrf_stats(hyps, _deranged(refs))
    swapped = _chrf_stats([hyps[j] for j in length_matched_swap(hyps)], refs)
    out = {"chrf_deranged": _corpus_chrf(deranged), "source_dependence": _dependence(own, deranged),
           "chrf_length_matched": _corpus_chrf(swapped), "source_dependence_length_only": _dependence(swapped, deranged),
           "source_dependence_beyond_length": _dependence(own, swapped)}
    tibetan = [tibetan_only(normalize(h)) for h in hyps]
    own_bo, deranged_bo = _chrf_stats(tibetan, refs), _chrf_stats(tibetan, _deranged(refs))
    out["source_dependence_tibetan"] = _dependence(own_bo, deranged_bo)
    if n_bootstrap > 1:
        samples = np.random.default_rng(seed).integers(0, len(refs), size=(n_bootstrap, len(refs)))
        _bootstrap(out, "source_dependence", np.array([_dependence(own, deranged, s) for s in samples]))
        _bootstrap(out, "source_dependence_beyond_length", np.array([_dependence(own, swapped, s) for s in samples]))
        _bootstrap(out, "source_dependence_tibetan", np.array([_dependence(own_bo, deranged_bo, s) for s in samples]))
    return out


def reference_floor(refs: Sequence[str]) -> dict:
    """The references scored against the same derangement: what Tibetan unrelated to the source reaches."""
    return {"chrf": _corpus_chrf(_chrf_stats(_deranged(refs), refs)), "lines": len(refs),
            "derangement": "line i against the reference of line i + n//2 (mod n)"}


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
