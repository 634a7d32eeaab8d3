"""Translation metrics on known inputs; syllable segmentation of a real FLORES line."""

import random

import pytest
from sacrebleu.metrics import BLEU

from megatron_tibetan.evaluation.metrics import METRICS, paired_bootstrap, score, syllable_view
from megatron_tibetan.text import normalize


@pytest.fixture(scope="module")
def flores_bo(shared_data):
    return (shared_data / "eval" / "flores200.dev.bo").read_text(encoding="utf-8").splitlines()[:40]


def test_syllable_segmentation_of_a_flores_line(flores_bo):
    line = flores_bo[2]  # Tibetan with digits, a time, Latin letters and brackets
    expected = (
        "ཇཨེས 39 སི གྷིརི པེན དེ རྒྱུག ལམ སྟེང ས གནས ཀྱི ཆུ ཚོད 9:30 ཡས མས ལ (0230 UTC) "
        "བརྡབ སྐྱོན ཤོར ནས ཐོར ནས གནང ཐང དེ ཚོང འབྲེལ མཁའ གྲུའི ཆེད སྒོ རྒྱབ དགོས བྱུང ཡོད །"
    ).split(" ")
    assert syllable_view(line).split(" ") == [normalize(t) for t in expected]


def test_identical_is_100_and_shuffled_is_lower(flores_bo):
    same = score(flores_bo, flores_bo, n_bootstrap=50)
    for key in METRICS:
        assert same[key] == pytest.approx(100.0), key
        low, high = same[f"{key}_ci95"]
        assert low == pytest.approx(100.0) and high == pytest.approx(100.0)
    shuffled = flores_bo[:]
    random.Random(0).shuffle(shuffled)
    worse = score(shuffled, flores_bo, n_bootstrap=50)
    for key in METRICS:
        assert worse[key] < 50.0, key
        assert worse[f"{key}_ci95"][0] <= worse[f"{key}_ci95"][1]


def test_syllable_bleu_is_informative_where_default_is_not(flores_bo):
    # one wrong syllable per line: nearly every syllable n-gram still matches, but the space-delimited
    # chunk that holds it (often the whole line: Tibetan has no spaces between words) no longer does
    def damage(line):
        parts = line.split("་")
        parts[len(parts) // 2] = "ཀ"
        return "་".join(parts)

    damaged = [damage(line) for line in flores_bo]
    got = score(damaged, flores_bo, n_bootstrap=1)
    assert got["bleu_syllable"] > 85
    assert 100 - got["bleu_default"] > 4 * (100 - got["bleu_syllable"])
    assert got["bleu_syllable"] == pytest.approx(
        BLEU(tokenize="none").corpus_score([syllable_view(h) for h in damaged], [[syllable_view(r) for r in flores_bo]]).score
    )


def test_paired_bootstrap_prefers_the_better_system(flores_bo):
    shuffled = flores_bo[1:] + flores_bo[:1]
    half = [r if i % 2 else s for i, (r, s) in enumerate(zip(flores_bo, shuffled))]
    result = paired_bootstrap({"shuffled": shuffled, "half": half}, flores_bo, n_samples=100)
    for key in METRICS:
        assert result[key]["shuffled"]["p_value"] is None
        assert result[key]["half"]["score"] > result[key]["shuffled"]["score"]
        assert result[key]["half"]["p_value"] < 0.05


def test_misaligned_files_are_an_error(flores_bo):
    with pytest.raises(ValueError, match="line-aligned"):
        score(flores_bo[:3], flores_bo[:4])


def test_intervals_on_hypotheses_that_often_share_nothing(flores_bo):
    # some bootstrap resamples score exactly 0 for chrF: sacrebleu mixes float and float32 there
    refs = flores_bo[:8]
    hyps = ["abc"] * 7 + [refs[7]]
    out = score(hyps, refs, n_bootstrap=200)
    for key in ("chrf", "chrf_pp"):
        low, high = out[f"{key}_ci95"]
        assert 0.0 <= low <= out[key] <= high <= 100.0
    assert out["chrf"] < 50


def test_length_alone_is_not_taken_for_following_the_source(shared_data):
    """One syllable repeated to each reference's length scores source dependence above 0 (p < 0.05) by its
    lengths alone; the length-matched swap puts nearly all of it under length. A copy of the references
    keeps nearly all of its dependence beyond length."""
    from megatron_tibetan.evaluation.metrics import length_matched_swap, source_dependence

    refs = (shared_data / "eval" / "flores200.dev.bo").read_text(encoding="utf-8").splitlines()[:100]
    loop = [("བཀྲ་ཤིས་" * 100)[: len(normalize(r))] for r in refs]
    looping = source_dependence(loop, refs, n_bootstrap=200)
    assert looping["source_dependence"] > 0.5 and looping["source_dependence_p_value"] < 0.05
    assert looping["source_dependence_length_only"] > 0.5 and abs(looping["source_dependence_beyond_length"]) < 0.1
    copy = source_dependence(refs, refs, n_bootstrap=200)
    assert copy["source_dependence_beyond_length"] > 50 and copy["source_dependence_beyond_length_p_value"] < 0.01
    for m in (looping, copy):
        assert m["source_dependence_length_only"] + m["source_dependence_beyond_length"] == pytest.approx(m["source_dependence"])
    # the swap: a derangement that pairs neighbours in length (an odd last three rotate)
    for hyps in (["a", "bbb", "cc"], ["a", "bb", "ccc", "dddd", "eeeee"], loop):
        partner = length_matched_swap(hyps)
        assert sorted(partner) == list(range(len(hyps))) and all(j != i for i, j in enumerate(partner))
    assert length_matched_swap(["dddd", "a", "ccc", "bb"]) == [2, 3, 0, 1]


def test_copied_digits_follow_the_source_but_not_in_tibetan(shared_data):
    """Output that copies the digits and Latin of its line (what reference and source share) after a fixed
    Tibetan phrase follows its source; the
    source dependence of its Tibetan runs alone is 0. A copy of the references keeps it in Tibetan."""
    import re

    from megatron_tibetan.evaluation.metrics import source_dependence
    from megatron_tibetan.text import tibetan_only

    assert tibetan_only("ས། 9:30 39C ཡས།") == "ས། ཡས།"
    refs = (shared_data / "eval" / "flores200.dev.bo").read_text(encoding="utf-8").splitlines()[:100]
    copied = ["བཀྲ་ཤིས་ " + " ".join(re.findall(r"[0-9A-Za-z]+", normalize(r))) for r in refs]
    assert sum(bool(re.search("[0-9A-Za-z]", r)) for r in refs) > 20  # the references do carry digits and Latin
    m = source_dependence(copied, refs, n_bootstrap=200)
    assert m["source_dependence"] > 0.5 and m["source_dependence_p_value"] < 0.05
    assert m["source_dependence_tibetan"] == pytest.approx(0.0, abs=1e-9)
    copy = source_dependence(refs, refs, n_bootstrap=200)
    assert copy["source_dependence_tibetan"] > 50 and copy["source_dependence_tibetan_p_value"] < 0.01
