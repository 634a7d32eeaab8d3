"""The pre-token cache used by preprocessing gives exactly the tokenizer's own ids: on real Tibetan,
English and Chinese lines and edge cases for SmolLM2 and Qwen2.5, with a BOS-adding post-processor,
with a tiny cache; the `regex` engine splits like the tokenizers library on every character the cached
path accepts; unsupported tokenizers fall back to plain encode_batch."""

import itertools
import json
import lzma

import pytest
from tokenizers import Regex, Tokenizer, pre_tokenizers

from megatron_tibetan import presets
from megatron_tibetan.data import encode as encode_module
from megatron_tibetan.data.encode import GPT2_PATTERN, PlainEncoder, make_encoder, split_pattern

EDGE_CASES = [
    "", " ", "  ", "it's  a   test\n\n x", "ཀ\n\nཁ ", "<|im_end|> ཀ་ཁ།", "emoji 😀 ཀ་", "\x1cཀ\x1f\x85ཁ",
    "ཀ ༡༢༣ 123 ١٢٣", "\u0f43\u0f73 \u0f42\u0fb7", "ཀ\u0f74\u0f7c", "I'LL don't", "\u3000全角　ཀ",
]


@pytest.fixture(scope="module", params=["smollm2", "qwen2.5"])
def tokenizer(request):
    directory = presets.smollm2_hf_dir() if request.param == "smollm2" else presets.qwen25_tokenizer_dir()
    return Tokenizer.from_file(str(directory / "tokenizer.json"))


@pytest.fixture(scope="module")
def smollm2():
    """For the tests that rebuild a tokenizer from edited JSON (Qwen's 151k vocabulary takes seconds)."""
    return Tokenizer.from_file(str(presets.smollm2_hf_dir() / "tokenizer.json"))


@pytest.fixture(scope="module")
def real_lines(shared_data):
    lines = []
    for name, n in [("mono/kangyur.bo.txt.xz", 300), ("mono/nanhai.bo.txt.xz", 2000),
                    ("parallel/openpecha.bo-en.en.xz", 1000), ("parallel/ntrex128.zh.xz", 300)]:
        with lzma.open(shared_data / name, "rt", encoding="utf-8") as f:
            lines += [line.rstrip("\n") for line in itertools.islice(f, n)]
    return lines + EDGE_CASES


def test_cached_ids_equal_the_tokenizer(tokenizer, real_lines):
    encoder = make_encoder(tokenizer)
    assert encoder.name == "piece-cache"
    assert encoder.encode_batch(real_lines) == [tokenizer.encode(t).ids for t in real_lines]


def test_tiny_cache_and_bos_post_processor(smollm2, real_lines, monkeypatch):
    monkeypatch.setattr(encode_module, "MAX_CACHE", 50)
    config = json.loads(smollm2.to_str())
    first = config["added_tokens"][0]
    config["post_processor"] = {"type": "TemplateProcessing", "single": [{"SpecialToken": {"id": first["content"], "type_id": 0}},
                                {"Sequence": {"id": "A", "type_id": 0}}], "pair": [{"Sequence": {"id": "A", "type_id": 0}}],
                                "special_tokens": {first["content"]: {"id": first["content"], "ids": [first["id"]], "tokens": [first["content"]]}}}
    with_bos = Tokenizer.from_str(json.dumps(config))
    encoder = make_encoder(with_bos)
    texts = real_lines[:300] + EDGE_CASES
    ids = encoder.encode_batch(texts)
    assert ids == [with_bos.encode(t).ids for t in texts] and ids[0][0] == first["id"]
    assert len(encoder._cache) <= 50


def test_regex_engine_splits_like_tokenizers_on_every_accepted_character(tokenizer):
    pattern = split_pattern(json.loads(tokenizer.to_str()))
    reference = pre_tokenizers.Split(Regex(pattern), behavior="isolated")
    import regex

    ours = regex.compile(pattern)
    accepted = [chr(c) for c in range(0x10000) if not encode_module._UNSTABLE_CHARS.match(chr(c))]
    assert len(accepted) > 20000
    for template in ("a{}b", " {} ", "{0}{0}1", "ཀ{}་", "'{}s", "\n{}\n", "{} "):
        text = "".join(template.format(c) for c in accepted)
        assert ours.findall(text) == [piece for piece, _ in reference.pre_tokenize_str(text)], template


def test_smollm2_uses_the_byte_level_expression():
    config = json.loads((presets.smollm2_hf_dir() / "tokenizer.json").read_text())
    assert split_pattern(config) == GPT2_PATTERN


def test_unsupported_tokenizers_fall_back(smollm2, real_lines):
    config = json.loads(smollm2.to_str())
    config["pre_tokenizer"] = {"type": "Whitespace"}
    assert split_pattern(config) is None
    whitespace = Tokenizer.from_str(json.dumps(config))
    plain = make_encoder(whitespace)
    assert isinstance(plain, PlainEncoder)
    assert plain.encode_batch(real_lines[:50]) == [whitespace.encode(t).ids for t in real_lines[:50]]
    config = json.loads(smollm2.to_str())
    config["normalizer"] = {"type": "Lowercase"}
    assert split_pattern(config) is None
    config = json.loads(smollm2.to_str())
    config["model"]["dropout"] = 0.1
    assert split_pattern(config) is None
