"""Preprocessing into Megatron indexed datasets: tokens read back through megatron-core's IndexedDataset
equal the tokenizer's own output (transformers' call) for the same normalised documents; counts
balance; --workers 2 writes the same bytes as --workers 1; each kind of bad input gives a clear error
or a counted skip, and leaves no partial dataset. The chunk-at-once steps equal their per-document
references: normalisation (real lines, each rule's trigger, random strings of the characters the rules
touch), the filters and counts (check_text, count_syllables, tibetan_ratio, UTF-8 length), the block
decoding (the per-line readers, on regular and irregular blocks), the bulk writer (megatron-core's
add_document per document)."""

import itertools
import json
import lzma
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from megatron_tibetan.data import preprocess as preprocess_module
from megatron_tibetan.data.preprocess import PreprocessConfig, preprocess
from megatron_tibetan.text import count_syllables, normalize, tibetan_ratio
from megatron_tibetan.text.filters import FILTER_REASONS, FilterConfig, check_text, drop_reasons
from megatron_tibetan.text.normalize import normalize_texts
from megatron_tibetan.text.readers import InputError, read_documents
from megatron_tibetan.text.segment import TextCounts

ROOT = Path(__file__).resolve().parents[1]
N_DOCS = 1500


@pytest.fixture(scope="module")
def tokenizer():
    from megatron_tibetan.tokenizer.base import load_tokenizer

    return load_tokenizer("smollm2")


@pytest.fixture(scope="module")
def nanhai(shared_data):
    path = shared_data / "mono" / "nanhai.bo.txt.xz"
    with lzma.open(path, "rt", encoding="utf-8") as f:
        return path, [line.rstrip("\n") for line in itertools.islice(f, N_DOCS)]


def _read(prefix):
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    dataset = IndexedDataset(prefix)
    return dataset, [np.array(dataset[i]).tolist() for i in range(len(dataset))]


def _config(tmp_path, inputs, **kw):
    return PreprocessConfig(inputs=tuple(map(str, inputs)), output_prefix=str(tmp_path / "out"), tokenizer="smollm2",
                            progress=False, **kw)


@pytest.fixture(scope="module")
def eod_run(tmp_path_factory, nanhai, tokenizer):
    """The first N_DOCS Nanhai lines, --append-eod, one worker, small chunks (many of them)."""
    tmp = tmp_path_factory.mktemp("eod")
    config = _config(tmp, [nanhai[0]], append_eod=True, limit=N_DOCS, chunk_bytes=64 << 10)
    return config, preprocess(config, tokenizer)


def test_round_trip_counts_and_stats(eod_run, nanhai, tokenizer):
    config, stats = eod_run
    filters, eod = FilterConfig(), tokenizer.eos_token_id
    expected, dropped, seen = [], dict.fromkeys(stats["dropped"], 0), set()
    for line in nanhai[1]:
        text = normalize(line)
        reason = check_text(text, filters) or ("duplicate" if text in seen else None)
        if reason:
            dropped[reason] += 1
            continue
        seen.add(text)
        expected.append(text)
    dataset, documents = _read(config.output_prefix + "_text_document")
    assert documents == [tokenizer(t).input_ids + [eod] for t in expected]
    assert dataset.index.dtype == np.uint16  # Megatron's choice below 65,500 tokens
    assert len(dataset.document_indices) == len(expected) + 1
    assert stats["dropped"] == dropped and dropped["duplicate"] > 0 and dropped["too_short"] > 0
    assert stats["documents_in"] == N_DOCS == stats["documents_out"] + sum(stats["dropped"].values())
    assert stats["tokens"] == sum(map(len, documents))
    syllables = sum(map(count_syllables, expected))
    assert stats["syllables"] == syllables
    assert stats["tokens_per_syllable"] == pytest.approx((stats["tokens"] - len(expected)) / syllables)
    assert stats["bytes_out"] == sum(len(t.encode()) for t in expected)
    on_disk = json.loads(Path(config.output_prefix + "_stats.json").read_text())
    assert on_disk["documents_out"] == len(expected) and on_disk["eod_id"] == eod
    assert on_disk["encoder"] == "piece-cache" and "piece-cache: ids equal the tokenizer's" in on_disk["encoder_reason"]


def test_two_workers_write_identical_files(eod_run, tmp_path, tokenizer):
    config, _ = eod_run
    stats = preprocess(replace(config, output_prefix=str(tmp_path / "w2"), workers=2), tokenizer)
    assert stats["workers"] == 2
    for suffix in (".bin", ".idx"):
        one = Path(config.output_prefix + "_text_document" + suffix).read_bytes()
        assert Path(stats["datasets"]["text"] + suffix).read_bytes() == one


def test_jsonl_keys_and_invalid_utf8_are_counted(tmp_path, nanhai, tokenizer):
    lines = nanhai[1][:40]
    records = [json.dumps({"text": t, "title": lines[-1 - i]}, ensure_ascii=False).encode() for i, t in enumerate(lines)]
    records[1] = records[1].replace("\u0f0b".encode(), b"\xff", 1)  # invalid UTF-8 on line 2
    path = tmp_path / "docs.jsonl.gz"
    import gzip

    path.write_bytes(gzip.compress(b"\n".join(records) + b"\n"))
    config = _config(tmp_path, [path], json_keys=("text", "title"), normalize=False,
                     filters=FilterConfig(min_chars=0, min_tibetan_ratio=0, dedup=False))
    stats = preprocess(config, tokenizer)
    assert stats["dropped"]["invalid_utf8"] == 1 and stats["invalid_utf8_lines"] == [f"{path}:2"]
    assert stats["documents_in"] == 40 and stats["documents_out"] == 39
    kept = [i for i in range(40) if i != 1]
    for key, texts in (("text", lines), ("title", lines[::-1])):
        _, documents = _read(str(tmp_path / f"out_{key}_document"))  # Megatron's naming for other keys
        assert documents == [tokenizer(texts[i]).input_ids for i in kept]  # no eod without --append-eod


def test_paragraph_documents_keep_their_lines(tmp_path, nanhai, tokenizer):
    lines = nanhai[1][:12]
    paragraphs = ["\n".join(lines[i : i + 3]) for i in range(0, 12, 3)]
    path = tmp_path / "paragraphs.txt"
    path.write_text("\n\n".join(paragraphs) + "\n", encoding="utf-8")
    stats = preprocess(_config(tmp_path, [path], paragraphs=True, append_eod=True), tokenizer)
    _, documents = _read(stats["datasets"]["text"])
    expected = [normalize(p, keep_layout=True) for p in paragraphs]
    assert all(text.count("\n") == 2 for text in expected)
    assert stats["documents_in"] == 4 and documents == [tokenizer(t).input_ids + [tokenizer.eos_token_id] for t in expected]


def test_multi_line_documents_keep_their_layout_unless_asked(tmp_path, tokenizer):
    """As Megatron-LM's preprocess_data.py keeps a document's text: blank lines, indentation and runs of spaces
    of a JSONL text stay; the Tibetan rules still apply; --no-keep-layout gives the earlier one-newline form."""
    layout = "ཀ་ཁ་ག་ང་ཅ་ཆ་ཇ་ཉ།\n\n    ཏ་ཐ་་ད་ན།  པ་ཕ་བ་མ།\r\n- ཙ་ཚ་ཛ་ཝ།\n"
    one_line = "ཀ་ཁ་ག་ང།   ཅ་ཆ་ཇ་ཉ།  "
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in (layout, one_line)), encoding="utf-8")
    filters = FilterConfig(min_chars=0, min_tibetan_ratio=0, dedup=False)
    kept = preprocess(_config(tmp_path, [path], filters=filters), tokenizer)
    _, documents = _read(kept["datasets"]["text"])
    assert [tokenizer.decode(d) for d in documents] == [
        "ཀ་ཁ་ག་ང་ཅ་ཆ་ཇ་ཉ།\n\n    ཏ་ཐ་ད་ན།  པ་ཕ་བ་མ།\n- ཙ་ཚ་ཛ་ཝ།\n", "ཀ་ཁ་ག་ང། ཅ་ཆ་ཇ་ཉ།"]
    assert kept["keep_layout"] is True
    collapsed = preprocess(replace(_config(tmp_path, [path], filters=filters), keep_layout=False,
                                   output_prefix=str(tmp_path / "collapsed")), tokenizer)
    _, documents = _read(collapsed["datasets"]["text"])
    assert tokenizer.decode(documents[0]) == normalize(layout, keep_newlines=True) == \
        "ཀ་ཁ་ག་ང་ཅ་ཆ་ཇ་ཉ།\nཏ་ཐ་ད་ན། པ་ཕ་བ་མ།\n- ཙ་ཚ་ཛ་ཝ།"


def test_qwen_vocabulary_is_written_as_int32(tmp_path, nanhai):
    config = replace(_config(tmp_path, [nanhai[0]], limit=30, append_eod=True), tokenizer="qwen2.5")
    stats = preprocess(config)
    dataset, documents = _read(stats["datasets"]["text"])
    assert dataset.index.dtype == np.int32 and stats["dtype"] == "int32"
    assert max(map(max, documents)) > 65535 and documents[0][-1] == stats["eod_id"] == 151643
    import importlib.util

    assert stats["encoder"] == ("gigatoken" if importlib.util.find_spec("gigatoken") else "piece-cache")


@pytest.fixture(scope="module")
def kangyur(shared_data):
    with lzma.open(shared_data / "mono" / "kangyur.bo.txt.xz", "rt", encoding="utf-8") as f:
        return [line.rstrip("\n") for line in itertools.islice(f, 300)]


# what each normalisation rule acts on, and characters near them (spaces, marks, letters, composition)
_RULE_CHARS = ["\x00", "\x07", "\x1c", "\x85", "\u200b", "\u00ad", "\ufeff", "\u0f77", "\u0f79", "\u0f43", "\u0f73",
               "\u0f71", "\u0f72", "\u0f74", "\u0f7c", "\u0fb7", "\u0f0b", "\u0f0c", "\u0f0d", " ", "  ", "\t", "\n", "\r",
               "\u00a0", "\u3000", "\u2028", "ཀ", "ག", "བ", "a", "é", "e\u0301", "\u212b", "中", "😀", "\uffff"]


def test_batch_normalisation_equals_normalize(nanhai, kangyur):
    import random

    rng = random.Random(0)
    generated = ["".join(rng.choice(_RULE_CHARS) for _ in range(rng.randint(0, 12))) for _ in range(3000)]
    triggers = ["ཀ་་ཁ", "ཀ ་ཁ", "ཀ་ ཁ", "ཀ\u0f0cཁ", "།།།", " ཀ", "ཀ ", "ཀ  ཁ", "ཀ\nཁ", "\u0f42\u0fb7", "ཀ\u200b", ""]
    texts = nanhai[1] + kangyur + triggers + generated
    expected = [normalize(t, keep_newlines="\n" in t) for t in texts]
    assert normalize_texts(texts, keep_layout=False) == expected
    assert normalize_texts(texts) == [normalize(t, keep_newlines="\n" in t, keep_layout="\n" in t) for t in texts]
    assert sum(a != b for a, b in zip(texts, expected)) > 1000  # the rules had work to do
    normal = expected[: len(nanhai[1]) + len(kangyur)]
    assert normalize_texts(normal) is normal  # real text, already normal: nothing redone


def test_batch_counts_and_filters_equal_the_per_document_ones(nanhai, kangyur):
    texts = nanhai[1] + kangyur + ["", " ", "ཀ", "abc def", "ཀ་ཁ \n中文", "😀ཀ་", "\u0f0b\u0f0b", "a\x00ཀ", "\ud800ཀ"]
    for t in [texts, texts[:1], []]:
        counts = TextCounts.of(t)
        assert counts.chars.tolist() == [len(x) for x in t]
        assert counts.syllables.tolist() == [count_syllables(x) for x in t]
        assert counts.utf8_bytes.tolist() == [len(x.encode("utf-8", "surrogatepass")) for x in t]
        non_space = counts.chars - counts.spaces
        assert [a / b if b else 0.0 for a, b in zip(counts.tibetan.tolist(), non_space.tolist())] == list(map(tibetan_ratio, t))
    for filters in (FilterConfig(), FilterConfig(min_chars=200, min_tibetan_ratio=0.9), FilterConfig(0, 0)):
        reasons = drop_reasons([TextCounts.of(texts, tibetan=filters.min_tibetan_ratio > 0)], filters)
        assert [FILTER_REASONS[r] for r in reasons] == [check_text(x, filters) for x in texts]
    # two keys: the first text that fails decides, as in the per-document path
    first, second = texts, texts[::-1]
    reasons = drop_reasons([TextCounts.of(first), TextCounts.of(second)], FilterConfig())
    expected = [check_text(a, FilterConfig()) or check_text(b, FilterConfig()) for a, b in zip(first, second)]
    assert [FILTER_REASONS[r] for r in reasons] == expected


@pytest.mark.parametrize("content", [
    b'{"text": "\xe0\xbd\x80", "t": "a"}\n{"t": "b", "text": "c\\u0f0b"}\n',  # regular: the fast path
    b'{"text": "a"}\n\n{"text": "b"}',  # a blank line, no final newline
    b'{"text": "a"}\r\n {"text": "b"} \r\n',  # CRLF, spaces around the JSON
    b'{"text": "a\xff"}\n{"text": "b"}\n',  # invalid UTF-8
])
def test_block_decoding_equals_the_line_readers(tmp_path, content):
    path = tmp_path / "docs.jsonl"
    path.write_bytes(content)
    config = PreprocessConfig(inputs=(str(path),), output_prefix="unused", tokenizer="unused", chunk_bytes=8)
    blocks = list(preprocess_module._read_chunks([path], config))
    reference = preprocess_module._decode(list(read_documents(path)), ("text",))
    decoded = [preprocess_module._decode(b, ("text",)) for b in blocks]
    assert sum(d.documents for d in decoded) == reference.documents
    assert sum(d.raw_bytes for d in decoded) == reference.raw_bytes
    assert [t for d in decoded for t in d.columns[0]] == reference.columns[0]
    assert [x for d in decoded for x in d.invalid] == reference.invalid
    assert [b.first_line for b in blocks] == sorted({b.first_line for b in blocks})
    limited = list(preprocess_module._read_chunks([path], PreprocessConfig(**{**config.__dict__, "limit": 1})))
    assert sum(preprocess_module._decode(b, ("text",)).documents for b in limited) == 1


def test_crlf_text_lines_and_limit(tmp_path, nanhai, tokenizer):
    lines = nanhai[1][:30]
    path = tmp_path / "crlf.txt"
    path.write_bytes("\r\n".join(lines).encode() + b"\r\n")
    stats = preprocess(_config(tmp_path, [path], limit=25, chunk_bytes=1024, filters=FilterConfig(0, 0, False)), tokenizer)
    _, documents = _read(stats["datasets"]["text"])
    assert stats["documents_in"] == 25 and documents == [tokenizer(normalize(t)).input_ids for t in lines[:25]]
    assert stats["bytes_in"] == sum(len(t.encode()) for t in lines[:25])
    assert stats["processing_cpu_seconds"] > 0 and 0 < stats["processing_seconds"] <= stats["seconds"]


def test_bulk_writer_equals_megatron_add_document(tmp_path):
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    from megatron_tibetan.data.indexed import DocumentWriter

    rng = np.random.default_rng(0)
    lengths = rng.integers(0, 50, size=200)
    tokens = rng.integers(0, 151000, size=int(lengths.sum()))
    reference = IndexedDatasetBuilder(str(tmp_path / "ref.bin"), dtype=np.int32)
    for document in np.split(tokens, np.cumsum(lengths)[:-1]):
        reference.add_document(document, [len(document)])
    reference.finalize(str(tmp_path / "ref.idx"))
    with DocumentWriter(str(tmp_path / "bulk"), np.int32) as writer:
        half = len(lengths) // 2
        split = int(lengths[:half].sum())
        writer.add_many(tokens[:split], lengths[:half])
        writer.add_many(tokens[split:], lengths[half:])
        with pytest.raises(ValueError, match="tokens for documents of"):
            writer.add_many(tokens[:5], np.array([4]))
    for suffix in (".bin", ".idx"):
        assert (tmp_path / f"bulk{suffix}").read_bytes() == (tmp_path / f"ref{suffix}").read_bytes()


def _no_output_left(tmp_path):
    return not [p.name for p in tmp_path.iterdir() if p.name.startswith("out")]


@pytest.mark.parametrize("name,content,error", [
    ("broken.txt.xz", None, r"broken\.txt\.xz: unreadable stream after line"),
    ("bad.jsonl", b'{"text": "\xe0\xbd\x80"}\n{"text": oops}\n', r"bad\.jsonl:2: malformed JSON"),
    ("nokey.jsonl", b'{"text": "\xe0\xbd\x80"}\n{"body": "x"}\n', r"nokey\.jsonl:2: missing key 'text'"),
    ("empty.txt", b"", r"empty input: no documents in .*empty\.txt"),
    ("english.txt", b"cut words\nhello world\n", r"all 2 documents .* dropped \(low_tibetan_ratio=2\)"),
])
def test_bad_input_is_an_error_and_leaves_nothing(tmp_path, nanhai, tokenizer, name, content, error):
    path = tmp_path / name
    if content is None:  # a real .xz cut in the middle
        data = nanhai[0].read_bytes()
        path.write_bytes(data[: len(data) // 3])
    else:
        path.write_bytes(content)
    with pytest.raises(InputError, match=error):
        preprocess(_config(tmp_path, [path]), tokenizer)
    assert _no_output_left(tmp_path)


def test_cli_missing_file(tmp_path):
    cli = [sys.executable, str(ROOT / "tools" / "preprocess_data.py"), "--tokenizer", "smollm2",
           "--output-prefix", str(tmp_path / "out")]
    missing = subprocess.run(cli + ["--input", str(tmp_path / "nope.txt.xz")], capture_output=True, text=True)
    assert missing.returncode == 1 and f"input file not found: {tmp_path / 'nope.txt.xz'}" in missing.stderr
    assert _no_output_left(tmp_path)
