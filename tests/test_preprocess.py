"""Preprocessing into Megatron indexed datasets: tokens read back through megatron-core's IndexedDataset
equal the tokenizer's own output (transformers' call) for the same normalised documents; counts
balance; --workers 2 writes the same bytes as --workers 1; each kind of bad input gives a clear error
or a counted skip, and leaves no partial dataset."""

import itertools
import json
import lzma
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from megatron_tibetan.data.preprocess import PreprocessConfig, preprocess
from megatron_tibetan.text import count_syllables, normalize
from megatron_tibetan.text.filters import FilterConfig, check_text
from megatron_tibetan.text.readers import InputError

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
    expected = [normalize(p, keep_newlines=True) for p in paragraphs]
    assert all(text.count("\n") == 2 for text in expected)
    assert stats["documents_in"] == 4 and documents == [tokenizer(t).input_ids + [tokenizer.eos_token_id] for t in expected]


def test_qwen_vocabulary_is_written_as_int32(tmp_path, nanhai):
    config = replace(_config(tmp_path, [nanhai[0]], limit=30, append_eod=True), tokenizer="qwen2.5")
    stats = preprocess(config)
    dataset, documents = _read(stats["datasets"]["text"])
    assert dataset.index.dtype == np.int32 and stats["dtype"] == "int32"
    assert max(map(max, documents)) > 65535 and documents[0][-1] == stats["eod_id"] == 151643
    import importlib.util

    assert stats["encoder"] == ("gigatoken" if importlib.util.find_spec("gigatoken") else "piece-cache")


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
