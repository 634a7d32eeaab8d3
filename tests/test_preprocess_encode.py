"""The encoders preprocessing tokenises with give exactly the tokenizer's own ids: gigatoken where it
loads the tokenizer (Qwen2.5), the pre-token cache elsewhere (SmolLM2, and a Qwen2.5 Tibetan extension
through the two-phase BPE), on real Tibetan, English and Chinese lines and edge cases, with a
BOS-adding post-processor and with a tiny cache; the start-up check refuses an encoder whose ids differ
and says why; the `regex` engine and its `re` translation split like the tokenizers library on every
character the cached path accepts; the batch syllable cut equals the per-piece one; unsupported
tokenizers fall back to the tokenizer itself."""

import itertools
import json
import lzma

import pytest
from tokenizers import Regex, Tokenizer, pre_tokenizers

from megatron_tibetan import presets
from megatron_tibetan.tokenizer import byte_level, encoded
from megatron_tibetan.tokenizer.byte_level import TwoPhaseBPE
from megatron_tibetan.tokenizer.encoder_choice import SAMPLE_TEXTS, build_encoder, select_encoder
from megatron_tibetan.tokenizer.encoders import PieceCachedEncoder, PlainEncoder
from megatron_tibetan.tokenizer.split_pattern import UNSTABLE_CHARS, split_pattern, stdlib_pattern
from megatron_tibetan.tokenizer.pretokenize import GPT2_PATTERN

EDGE_CASES = list(SAMPLE_TEXTS) + ["ཀ་, ཁ་ ག", "ཀ་\x00ཁ་", "ཀ་a་ཁ", "  ཀ་ཁ་  ", "ཀ་ཁ་ག་ང་ཅ་ཆ་ཇ་ཉ་ཏ་ཐ་ད་ན་"]


def _tokenizer(name):
    directory = presets.smollm2_hf_dir() if name == "smollm2" else presets.qwen25_tokenizer_dir()
    return Tokenizer.from_file(str(directory / "tokenizer.json"))


@pytest.fixture(scope="module", params=["smollm2", "qwen2.5"])
def tokenizer(request):
    return _tokenizer(request.param)


@pytest.fixture(scope="module")
def smollm2():
    """For the tests that rebuild a tokenizer from edited JSON (Qwen's 151k vocabulary takes seconds)."""
    return _tokenizer("smollm2")


@pytest.fixture(scope="module")
def real_lines(shared_data):
    lines = []
    for name, n in [("mono/kangyur.bo.txt.xz", 300), ("mono/nanhai.bo.txt.xz", 2000),
                    ("parallel/openpecha.bo-en.en.xz", 1000), ("parallel/ntrex128.zh.xz", 300)]:
        with lzma.open(shared_data / name, "rt", encoding="utf-8") as f:
            lines += [line.rstrip("\n") for line in itertools.islice(f, n)]
    return lines + EDGE_CASES


@pytest.fixture(scope="module")
def extended(shared_data):
    """A Qwen2.5 extension with 1,000 Tibetan run tokens (pre-tokens of several syllables)."""
    from megatron_tibetan.tokenizer.bpe_extend import extended_backend, learn_extension

    base, merges, info = learn_extension("qwen2.5", [shared_data / "mono" / "nanhai.bo.txt.xz"], 1000,
                                         max_lines_per_file=1500, unit="run")
    return extended_backend(base, merges, info["unit"]), len(base)


def _reference(tokenizer, texts):
    return [e.ids for e in tokenizer.encode_batch(texts)]


def test_piece_cache_ids_equal_the_tokenizer(tokenizer, real_lines):
    encoder = build_encoder(tokenizer, "piece-cache")
    assert encoder.encode_batch(real_lines) == _reference(tokenizer, real_lines)
    assert encoder.encode_batch(real_lines[:500]) == _reference(tokenizer, real_lines[:500])  # from the cache


def test_gigatoken_where_it_loads_the_tokenizer(real_lines):
    pytest.importorskip("gigatoken")
    qwen = _tokenizer("qwen2.5")
    encoder = select_encoder(qwen, real_lines[:50])
    assert encoder.name == "gigatoken" and "ids equal the tokenizer's" in encoder.reason
    assert encoder.encode_batch(real_lines) == _reference(qwen, real_lines)
    smollm2 = select_encoder(_tokenizer("smollm2"))
    assert smollm2.name == "piece-cache" and "gigatoken: " in smollm2.reason  # refused, and why


def test_start_up_check_refuses_an_encoder_whose_ids_differ(smollm2, monkeypatch):
    def off_by_one(self, texts):
        result = original(self, texts)
        return result._replace(tokens=result.tokens + (result.tokens == 1234))

    original = PieceCachedEncoder._encode_fast
    monkeypatch.setattr(PieceCachedEncoder, "_encode_fast", off_by_one)
    target = smollm2.decode([1234])
    encoder = select_encoder(smollm2, [f"a{target} ཀ་"])
    assert isinstance(encoder, PlainEncoder)
    assert "piece-cache: ids differ from the tokenizer's on 1 of" in encoder.reason


def test_tiny_cache_and_bos_post_processor(smollm2, real_lines, monkeypatch):
    monkeypatch.setattr(encoded, "MAX_CACHE", 50)
    config = json.loads(smollm2.to_str())
    first = config["added_tokens"][0]
    config["post_processor"] = {"type": "TemplateProcessing", "single": [{"SpecialToken": {"id": first["content"], "type_id": 0}},
                                {"Sequence": {"id": "A", "type_id": 0}}], "pair": [{"Sequence": {"id": "A", "type_id": 0}}],
                                "special_tokens": {first["content"]: {"id": first["content"], "ids": [first["id"]], "tokens": [first["content"]]}}}
    with_bos = Tokenizer.from_str(json.dumps(config))
    encoder = build_encoder(with_bos, "piece-cache")
    texts = real_lines[:300] + EDGE_CASES
    ids = encoder.encode_batch(texts)
    assert ids == _reference(with_bos, texts) and ids[0][0] == first["id"]
    assert [encoder.encode_batch([t])[0] for t in texts] == ids  # one document per batch: cleared often
    most = max(len(set(encoder._split(t))) for t in texts)  # the cache holds at least one batch's pre-tokens
    assert len(encoder._index) <= max(50, most)


@pytest.mark.parametrize("ignore_merges", [True, False])
def test_extended_tokenizer_two_phase_ids(extended, real_lines, ignore_merges):
    backend, base_size = extended
    config = json.loads(backend.to_str())
    config["model"]["ignore_merges"] = ignore_merges  # Qwen's is True: a whole-vocabulary pre-token is one id
    unreachable = byte_level.byte_level("ཀ་ཁ་ག་")  # an entry no merge makes: only ignore_merges finds it
    config["model"]["vocab"][unreachable] = len(config["model"]["vocab"]) + len(config["added_tokens"])
    tokenizer = Tokenizer.from_str(json.dumps(config))
    encoder = select_encoder(tokenizer, real_lines[:50])
    assert encoder.name == "piece-cache" and encoder._two_phase is not None
    base_merges = len(json.loads(_tokenizer("qwen2.5").to_str())["model"]["merges"])
    assert encoder._two_phase.split >= base_merges  # phase 1 holds every base merge
    texts = real_lines + [line.replace("།", "་") for line in real_lines[:300]] + ["ཀ་ཁ་ག་", "ཀ་ཁ་ག་ ཀ་ཁ་ག་།"]
    assert encoder.encode_batch(texts) == _reference(tokenizer, texts)


def test_two_phase_refuses_merges_out_of_order(extended, real_lines):
    backend, base_size = extended
    config = json.loads(backend.to_str())
    vocab, merges = config["model"]["vocab"], config["model"]["merges"]
    late = merges[-1]  # the last merge: it makes a new token, in phase 2
    assert vocab["".join(late)] >= base_size
    made = "".join(late)
    vocab[made + "!"] = len(vocab) + len(config["added_tokens"])
    merges.insert(0, [made, "!"])  # an early merge that takes the new token
    tokenizer = Tokenizer.from_str(json.dumps(config))
    with pytest.raises(ValueError, match="takes a token that a later merge makes"):
        TwoPhaseBPE(json.loads(tokenizer.to_str()))
    encoder = build_encoder(tokenizer, "piece-cache")
    assert encoder._two_phase is None and "no two-phase BPE" in encoder.reason
    texts = real_lines[:300] + EDGE_CASES
    assert encoder.encode_batch(texts) == _reference(tokenizer, texts)


def _splits_like_tokenizers(pattern):
    """The `regex` engine and the `re` translation cut like the tokenizers library, every accepted character
    in several contexts (the cached path sees only documents made of these characters)."""
    import re

    import regex

    reference = pre_tokenizers.Split(Regex(pattern), behavior="isolated")
    translated = stdlib_pattern(pattern)
    assert translated is not None and translated != pattern
    engines = [regex.compile(pattern), re.compile(translated)]
    accepted = [chr(c) for c in range(0x10000) if not UNSTABLE_CHARS.match(chr(c))]
    assert len(accepted) > 20000
    for template in ("a{}b", " {} ", "{0}{0}1", "ཀ{}་", "'{}s", "\n{}\n", "{} ", "{0}  {0}\n\n"):
        text = "".join(template.format(c) for c in accepted)
        expected = [piece for piece, _ in reference.pre_tokenize_str(text)]
        for engine in engines:
            assert engine.findall(text) == expected, (template, engine)


def test_regex_engines_split_like_tokenizers_on_every_accepted_character(tokenizer):
    _splits_like_tokenizers(split_pattern(json.loads(tokenizer.to_str())))


def test_extended_split_expression_in_re(extended):
    backend, _ = extended
    pattern = split_pattern(json.loads(backend.to_str()))
    assert pattern.startswith(" ?[")  # the Tibetan alternatives in front of Qwen's expression
    _splits_like_tokenizers(pattern)


def test_stdlib_pattern_refuses_what_re_may_read_otherwise():
    import re

    assert stdlib_pattern(r"(?i)\p{L}+") is None  # global flags
    assert stdlib_pattern(r"(?i:\p{Lu})") is None  # a class under case-insensitive matching
    assert stdlib_pattern(r"\p{Lu}(?i:'s)") is not None  # the flag's scope ends before
    assert stdlib_pattern(r"\x{41}") is None  # `regex` syntax `re` does not compile
    literal_bracket = re.compile(stdlib_pattern(r"[]\s]+"))  # a ] first in a class is a character
    assert literal_bracket.fullmatch("] \t]") and not literal_bracket.search("a")


def test_batch_syllable_cut_equals_the_per_piece_cut():
    pieces = ["ཀ་ཁ་ག", "སངས་རྒྱས་", " བོད་སྐད་དུ", "ཀ་ཁ", "།་ཀ", "ཀ་༡་ཁ", "ཀ\u0f0cཁ\u0f0c"]
    per_piece = [part for piece in pieces for part in byte_level._SYLLABLE_CUT.split(piece) + ["\x00"]]
    fast = byte_level._syllable_parts(pieces)  # every tsheg is a cut: str methods on the whole batch
    assert [p for p in fast if p] == per_piece
    for odd in ("ཀ་ ཁ་ག", "ཀ་a་ཁ", "ཀ་\x01ཁ་ག", "ཀ་\x00ཁ་ག"):  # a tsheg that is no cut, or a mark in the text
        assert byte_level._syllable_parts(pieces + [odd]) == per_piece + byte_level._SYLLABLE_CUT.split(odd) + ["\x00"]


def test_smollm2_uses_the_byte_level_expression():
    config = json.loads((presets.smollm2_hf_dir() / "tokenizer.json").read_text())
    assert split_pattern(config) == GPT2_PATTERN


def test_unsupported_tokenizers_fall_back(smollm2, real_lines):
    config = json.loads(smollm2.to_str())
    config["pre_tokenizer"] = {"type": "Whitespace"}
    assert split_pattern(config) is None
    whitespace = Tokenizer.from_str(json.dumps(config))
    plain = select_encoder(whitespace)
    assert isinstance(plain, PlainEncoder) and "piece-cache: " in plain.reason
    assert plain.encode_batch(real_lines[:50]) == _reference(whitespace, real_lines[:50])
    config = json.loads(smollm2.to_str())
    config["normalizer"] = {"type": "Lowercase"}
    assert split_pattern(config) is None
    config = json.loads(smollm2.to_str())
    config["model"]["dropout"] = 0.1
    assert split_pattern(config) is None
