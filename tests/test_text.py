"""Tibetan text: each normalisation rule on real lines of ../shared/data (synthetic text only where the
corpora lack the phenomenon), segmentation, filters and streaming readers."""

import gzip
import json
import lzma
import unicodedata

import pytest

from megatron_tibetan.text import count_syllables, normalize, segment_for_bleu, syllables, tibetan_ratio
from megatron_tibetan.text.filters import DuplicateFilter, FilterConfig, check_text, text_digest
from megatron_tibetan.text.readers import InputError, decode_document, expand_inputs, iter_texts, read_all

TSHEG, NB_TSHEG, SHAD = "\u0f0b", "\u0f0c", "\u0f0d"

# (file, 1-based line) of real lines that show each phenomenon
REAL = {
    "zwsp": ("mono/nanhai.bo.txt.xz", 8843),
    "nbsp": ("mono/nanhai.bo.txt.xz", 47438),
    "mark_order": ("mono/nanhai.bo.txt.xz", 1855),
    "mark_order_flores": ("eval/flores200.dev.bo", 44),
    "gha": ("eval/flores200.dev.bo", 60),
    "bha": ("mono/nanhai.bo.txt.xz", 3502),
    "nb_tsheg": ("mono/nanhai.bo.txt.xz", 1362),
    "space_before_tsheg": ("mono/nanhai.bo.txt.xz", 251),
    "space_after_tsheg": ("eval/flores200.dev.bo", 1),
    "tsheg_run": ("mono/kangyur.bo.txt.xz", 5115),
    "space_tsheg_run": ("mono/nanhai.bo.txt.xz", 379),
    "shad_run": ("mono/nanhai.bo.txt.xz", 18393),
    "indent": ("eval/flores200.dev.bo", 15),
    "english": ("mono/nanhai.bo.txt.xz", 1232),
}


def _open_text(path):
    return lzma.open(path, "rt", encoding="utf-8") if path.suffix == ".xz" else open(path, encoding="utf-8")


@pytest.fixture(scope="module")
def real(shared_data):
    """The lines named in REAL, each file read once (up to the last line needed)."""
    wanted: dict = {}
    for name, (file, line) in REAL.items():
        wanted.setdefault(file, {})[line] = name
    lines = {}
    for file, by_line in wanted.items():
        with _open_text(shared_data / file) as f:
            for number, text in enumerate(f, 1):
                if number in by_line:
                    lines[by_line[number]] = text.rstrip("\n")
                if number >= max(by_line):
                    break
    return lines


@pytest.fixture(scope="module")
def sample(shared_data):
    """The first 3000 nanhai lines and all FLORES dev lines, raw."""
    with _open_text(shared_data / "mono/nanhai.bo.txt.xz") as f:
        lines = [next(f).rstrip("\n") for _ in range(3000)]
    return lines + (shared_data / "eval/flores200.dev.bo").read_text(encoding="utf-8").splitlines()


# --- rule 1: invisible and control characters -------------------------------------------------------

def test_zero_width_space_removed_real(real):
    line = real["zwsp"]
    assert line.startswith("\u200b")
    assert normalize(line) == line.replace("\u200b", "").strip()


def test_control_characters_synthetic():
    # the corpora contain no C0/C1 controls: synthetic. Non-space controls vanish, space-like ones separate.
    assert normalize("བཀྲ\x00་ཤིས\x7f།\u00ad") == "བཀྲ་ཤིས།"
    assert normalize("བཀྲ་ཤིས།\x0cབདེ་ལེགས།\x1f\x85ཀ") == "བཀྲ་ཤིས། བདེ་ལེགས། ཀ"
    assert normalize("\ufeffཀ\u200dཁ\u2060ག") == "ཀཁག"


# --- rule 2: deprecated vowel signs ------------------------------------------------------------------

def test_deprecated_vowels_synthetic():
    # U+0F77 / U+0F79 do not occur in the corpora; NFC keeps them, we spell them out as NFKC would
    assert normalize("ར\u0f77") == "ར\u0fb2\u0f71\u0f80" == unicodedata.normalize("NFKC", "ར\u0f77")
    assert normalize("ལ\u0f79") == "ལ\u0fb3\u0f71\u0f80"


# --- rule 3: NFC (canonical order of marks, composition-excluded letters decomposed) -----------------

@pytest.mark.parametrize("name", ["mark_order", "mark_order_flores"])
def test_marks_reordered_real(real, name):
    line = real[name]
    assert "ཚ\u0f74\u0f7c" in line  # u-vowel before o-vowel, as typed
    out = normalize(line)
    assert "ཚ\u0f7c\u0f74" in out and "ཚ\u0f74\u0f7c" not in out  # canonical order: ccc 130 before 132
    assert normalize(line.replace("ཚ\u0f74\u0f7c", "ཚ\u0f7c\u0f74")) == out  # both spellings agree


@pytest.mark.parametrize("name,precomposed,decomposed", [
    ("gha", "\u0f43", "\u0f42\u0fb7"), ("bha", "\u0f57", "\u0f56\u0fb7")])
def test_precomposed_letters_decomposed_real(real, name, precomposed, decomposed):
    line = real[name]
    assert precomposed in line
    out = normalize(line)
    assert precomposed not in out and decomposed in out
    assert normalize(line.replace(precomposed, decomposed)) == out


def test_precomposed_vowel_synthetic():
    # U+0F73 (ii) and U+0F75 (uu) are composition exclusions; both spellings give one sequence
    assert normalize("ཀ\u0f73") == normalize("ཀ\u0f71\u0f72") == "ཀ\u0f71\u0f72"
    assert normalize("ཧ\u0f75") == "ཧ\u0f71\u0f74"


# --- rules 4-6: tsheg and shad -----------------------------------------------------------------------

def test_non_breaking_tsheg_real(real):
    line = real["nb_tsheg"]
    assert line.endswith("འོང" + NB_TSHEG + SHAD)
    assert normalize(line) == line.replace(NB_TSHEG, TSHEG)


def test_space_before_tsheg_real(real):
    line = real["space_before_tsheg"]
    assert "ཤེས " + TSHEG + "+པ" in line
    out = normalize(line)
    assert "ཤེས" + TSHEG + "+པ" in out and " " + TSHEG not in out


def test_space_after_tsheg_real(real):
    line = real["space_after_tsheg"]
    assert "ཨ་སྒོར་ སེནཊ" in line
    out = normalize(line)
    assert "ཨ་སྒོར་སེནཊ" in out and TSHEG + " " not in out


@pytest.mark.parametrize("name,before,after", [
    ("tsheg_run", "མ་་བཏིང", "མ་བཏིང"), ("space_tsheg_run", "ལེན་པ ་་གཉིས", "ལེན་པ་གཉིས")])
def test_tsheg_runs_real(real, name, before, after):
    line = real[name]
    assert before in line
    out = normalize(line)
    assert after in out and TSHEG * 2 not in out


def test_shad_runs_real(real):
    line = real["shad_run"]
    assert line.endswith("ཡོད་དོ" + SHAD * 4)
    assert normalize(line).endswith("ཡོད་དོ" + SHAD * 2)
    assert normalize("ཀ" + SHAD * 2) == "ཀ" + SHAD * 2  # a double shad is kept


# --- rule 7: whitespace ------------------------------------------------------------------------------

def test_no_break_space_real(real):
    line = real["nbsp"]
    assert "མཛད་\xa0འདུག" in line
    assert "\xa0" not in normalize(line)


def test_indent_and_space_runs_real(real):
    line = real["indent"]
    assert line.startswith(" " * 8)
    out = normalize(line)
    assert out == out.strip() and "  " not in out and out.startswith("རྩེད")


def test_keep_newlines_synthetic():
    text = "ཀ་ཁ། \r\n\n  ག་ང།\u3000ཅ"
    assert normalize(text) == "ཀ་ཁ། ག་ང། ཅ"
    assert normalize(text, keep_newlines=True) == "ཀ་ཁ།\nག་ང། ཅ"


def test_keep_layout_applies_the_tibetan_rules_only():
    for text in ("def f(x):\n    return  x*2\n", "para one.\n\npara two", "- a\n\n  - b\t c\n", "  ཀ་ཁ།\n\n\tག་ང།  ཅ "):
        assert normalize(text, keep_layout=True) == text
    assert normalize("ཀ་་ཁ\u0f0cག \u0f0b ང\u200b\r\n\n  ཀ\u0f77", keep_layout=True) == "ཀ་ཁ་ག་ང\n\n  ཀ\u0fb2\u0f71\u0f80"


def test_normalize_is_idempotent_and_nfc_on_real_sample(sample):
    changed = 0
    for line in sample:
        out = normalize(line)
        assert normalize(out) == out
        assert unicodedata.is_normalized("NFC", out)
        changed += out != line
    assert changed > 0  # the sample does exercise the rules


# --- segmentation ------------------------------------------------------------------------------------

def test_syllables_real(real):
    line = normalize(real["nb_tsheg"])  # མཆོད་ཆུ་འཁུར་སར་ཡང་ཐོན་འོང་།
    assert syllables(line) == ["མཆོད", "ཆུ", "འཁུར", "སར", "ཡང", "ཐོན", "འོང"]
    assert count_syllables(line) == 7
    assert segment_for_bleu(line) == "མཆོད ཆུ འཁུར སར ཡང ཐོན འོང །"


def test_tibetan_ratio_matches_character_count(sample, real):
    for line in sample[:500] + [real["english"], "", "   "]:
        chars = [c for c in line if not c.isspace()]
        expected = sum("\u0f00" <= c <= "\u0fff" for c in chars) / len(chars) if chars else 0.0
        assert tibetan_ratio(line) == pytest.approx(expected)


# --- filters -----------------------------------------------------------------------------------------

def test_filters_on_real_lines(real, sample):
    config = FilterConfig(min_chars=8, min_tibetan_ratio=0.5)
    assert real["english"] == "cut words"  # an English note in the Nanhai corpus
    assert check_text(normalize(real["english"]), config) == "low_tibetan_ratio"
    assert check_text("", config) == "empty"
    short = next(normalize(x) for x in sample if 0 < len(normalize(x)) < 8 and tibetan_ratio(normalize(x)) >= 0.5)
    assert check_text(short, config) == "too_short"
    assert check_text(short, FilterConfig(min_chars=1)) is None
    assert check_text(normalize(real["shad_run"]), config) is None
    assert check_text(normalize(real["english"]), FilterConfig(min_tibetan_ratio=0)) is None


def test_duplicate_filter_on_real_sample(sample):
    dedup = DuplicateFilter(memory_mb=1)
    texts = [normalize(x) for x in sample]
    flags = [dedup.seen(text_digest((t,))) for t in texts]
    first = {}
    for i, t in enumerate(texts):
        first.setdefault(t, i)
    assert flags == [first[t] != i for i, t in enumerate(texts)]  # exactly the repeats
    assert sum(flags) > 0 and dedup.nbytes <= 2**20


def test_duplicate_filter_memory_is_bounded():
    dedup = DuplicateFilter(memory_mb=16 * 8 / 2**20)  # 16 slots: remembers 8 digests
    assert [dedup.seen(d) for d in range(1, 13)] == [False] * 12
    assert dedup.entries == 8 and dedup.not_remembered == 4 and dedup.nbytes == 128
    assert dedup.seen(1) and not dedup.seen(12)  # remembered vs. counted-but-forgotten


# --- readers -----------------------------------------------------------------------------------------

def _write_all(tmp_path, lines):
    """The same lines as .txt, .gz, .xz and .zst."""
    import zstandard

    data = ("\n".join(lines) + "\n").encode("utf-8")
    (tmp_path / "a.txt").write_bytes(data)
    (tmp_path / "b.txt.gz").write_bytes(gzip.compress(data))
    (tmp_path / "c.txt.xz").write_bytes(lzma.compress(data))
    (tmp_path / "d.txt.zst").write_bytes(zstandard.ZstdCompressor().compress(data))


def test_readers_compressed_and_globs(tmp_path, sample):
    lines = sample[:50]
    _write_all(tmp_path, lines)
    paths = expand_inputs([str(tmp_path / "*.txt*")])
    assert [p.name for p in paths] == ["a.txt", "b.txt.gz", "c.txt.xz", "d.txt.zst"]
    assert list(iter_texts([str(tmp_path / "*.txt*")])) == lines * 4
    docs = list(read_all([tmp_path / "c.txt.xz"]))
    assert [(d.line, d.source) for d in docs[:2]] == [(1, str(tmp_path / "c.txt.xz")), (2, str(tmp_path / "c.txt.xz"))]


def test_readers_paragraphs(tmp_path, sample):
    (tmp_path / "p.txt").write_text(f"{sample[0]}\n{sample[1]}\n\n\n{sample[2]}\n", encoding="utf-8")
    docs = list(read_all([tmp_path / "p.txt"], paragraphs=True))
    assert [d.line for d in docs] == [1, 5]
    assert [decode_document(d)[0] for d in docs] == [sample[0] + "\n" + sample[1], sample[2]]


def test_readers_jsonl_and_errors(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text(json.dumps({"text": "ཀ་ཁ།", "title": "ག"}, ensure_ascii=False) + "\n\n{bad json\n"
                    + json.dumps({"title": "ང"}) + "\n" + json.dumps({"text": 3}) + "\n", encoding="utf-8")
    docs = list(read_all([path]))
    assert decode_document(docs[0], ("text", "title")) == ("ཀ་ཁ།", "ག")
    assert decode_document(docs[1], ("text",)) == ("",)  # a blank line: an empty document, counted later
    with pytest.raises(InputError, match=r"x\.jsonl:3: malformed JSON"):
        decode_document(docs[2])
    with pytest.raises(InputError, match=r"x\.jsonl:4: missing key 'text'"):
        decode_document(docs[3])
    with pytest.raises(InputError, match=r"x\.jsonl:5: key 'text' is int"):
        decode_document(docs[4])


def test_readers_bad_files(tmp_path, sample):
    with pytest.raises(FileNotFoundError, match="no-such.txt"):
        expand_inputs([str(tmp_path / "no-such.txt")])
    with pytest.raises(FileNotFoundError, match="no file matches"):
        expand_inputs([str(tmp_path / "*.jsonl")])
    packed = lzma.compress("\n".join(sample).encode())
    (tmp_path / "bad.txt.xz").write_bytes(packed[: len(packed) // 2])  # truncated
    with pytest.raises(InputError, match=r"bad\.txt\.xz: unreadable stream"):
        list(read_all([tmp_path / "bad.txt.xz"]))
    (tmp_path / "plain.txt.gz").write_text("not gzip\n")
    with pytest.raises(InputError, match=r"plain\.txt\.gz: unreadable stream"):
        list(read_all([tmp_path / "plain.txt.gz"]))
    (tmp_path / "latin1.txt").write_bytes("ཀ་ཁ།\ncaf\xe9\n".encode("utf-8").replace(b"\xc3\xa9", b"\xe9"))
    with pytest.raises(InputError, match=r"latin1\.txt:2: invalid UTF-8"):
        list(iter_texts([tmp_path / "latin1.txt"]))
