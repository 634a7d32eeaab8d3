"""Tibetan vocabulary extension of a SentencePiece base. The base is trained here (Llama 2's settings:
BPE, byte fallback, split digits) on the English and Chinese sides of NTREX, so no external model is
needed; references are ``sentencepiece`` itself and ``transformers``."""

import importlib.util
import json
import subprocess
import sys
import unicodedata
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

from megatron_tibetan.text import normalize
from megatron_tibetan.tokenizer import load_tokenizer
from megatron_tibetan.tokenizer.base import BYTE_LEVEL_BPE, SENTENCEPIECE, base_kind
from megatron_tibetan.tokenizer.embeddings import base_subtoken_ids, init_new_embeddings
from megatron_tibetan.tokenizer.extend import extend_tokenizer
from megatron_tibetan.tokenizer.extension_file import load_extension
from megatron_tibetan.tokenizer.fertility import fertility
from megatron_tibetan.tokenizer.sentencepiece_model import read_model_proto

ROOT = Path(__file__).resolve().parents[1]
NEW_PIECES = 1000
BASE_PIECES = 4000  # the Chinese side alone needs about 2,400 characters
CHAT_TEMPLATE = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}</s>{% endfor %}"


def train_sp(lines, path: Path, vocab_size: int, **settings) -> Path:
    import sentencepiece as spm

    llama2 = dict(model_type="bpe", byte_fallback=True, split_digits=True, normalization_rule_name="identity",
                  remove_extra_whitespaces=False, allow_whitespace_only_pieces=True, character_coverage=0.99995,
                  max_sentencepiece_length=16, num_threads=1, minloglevel=2)
    with open(path, "wb") as out:
        spm.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_writer=out, vocab_size=vocab_size,
                                       **{**llama2, **settings})
    return path


def processor(path: Path, **normalizer):
    """A ``sentencepiece`` processor on the model at ``path``, its normalizer settings changed by ``normalizer``."""
    import sentencepiece as spm

    proto = read_model_proto(path)
    for key, value in normalizer.items():
        setattr(proto.normalizer_spec, key, value)
    return spm.SentencePieceProcessor(model_proto=proto.SerializeToString())


@pytest.fixture(scope="session")
def en_zh(shared_data):
    from megatron_tibetan.text.readers import iter_texts

    return [normalize(x) for lang in ("en", "zh") for x in iter_texts([shared_data / "parallel" / f"ntrex128.{lang}.xz"])]


@pytest.fixture(scope="session")
def sp_base(en_zh, tmp_path_factory) -> Path:
    """A Llama-2-like HF tokenizer directory: tokenizer.model, tokenizer.json, config with a chat template."""
    from transformers import LlamaTokenizer

    out = tmp_path_factory.mktemp("sp_base")
    train_sp(en_zh, out / "tokenizer.model", BASE_PIECES)
    tok = LlamaTokenizer.from_pretrained(str(out))
    tok.chat_template = CHAT_TEMPLATE
    tok.save_pretrained(str(out))
    return out


@pytest.fixture(scope="session")
def sp_base_tok(sp_base):
    return AutoTokenizer.from_pretrained(str(sp_base))


@pytest.fixture(scope="session")
def flores(shared_data):
    return {lang: [normalize(x) for x in (shared_data / "eval" / f"flores200.dev.{lang}").read_text().splitlines()]
            for lang in ("bo", "zh", "en")}


@pytest.fixture(scope="session")
def sp_extended_dir(sp_base, shared_data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sp_bo1k")
    extend_tokenizer(str(sp_base), [shared_data / "mono" / "nanhai.bo.txt.xz"], NEW_PIECES, out, max_lines_per_file=3000)
    return out


@pytest.fixture(scope="session")
def sp_extended(sp_extended_dir):
    return AutoTokenizer.from_pretrained(str(sp_extended_dir))


def test_base_kind(sp_base, tmp_path):
    assert base_kind(str(sp_base)) == base_kind(str(sp_base / "tokenizer.model")) == SENTENCEPIECE
    assert base_kind("smollm2") == BYTE_LEVEL_BPE
    assert len(load_tokenizer(str(sp_base / "tokenizer.model"))) == BASE_PIECES  # a bare .model loads too

    from tokenizers import Tokenizer, models

    Tokenizer(models.WordPiece({"[UNK]": 0, "a": 1}, unk_token="[UNK]")).save(str(tmp_path / "wordpiece.json"))
    with pytest.raises(ValueError, match="WordPiece model that is neither byte-level BPE nor a SentencePiece"):
        base_kind(str(tmp_path / "wordpiece.json"))
    # the fast tokenizer of a SentencePiece base without its tokenizer.model: nothing to merge pieces into
    with pytest.raises(ValueError, match="pass the directory that holds its tokenizer.model"):
        base_kind(str(sp_base / "tokenizer.json"))


def test_base_ids_and_scores_kept(sp_base, sp_extended_dir):
    base, merged = read_model_proto(sp_base / "tokenizer.model"), read_model_proto(sp_extended_dir / "tokenizer.model")
    n = len(base.pieces)
    assert len(merged.pieces) == n + NEW_PIECES
    assert [(p.piece, p.score, p.type) for p in merged.pieces[:n]] == [(p.piece, p.score, p.type) for p in base.pieces]
    new_scores = [p.score for p in merged.pieces[n:]]
    assert max(new_scores) < min(p.score for p in base.pieces)  # base merges always rank first
    assert all(a > b for a, b in zip(new_scores, new_scores[1:]))
    assert all(any("\u0f00" <= c <= "\u0fff" for c in p.piece) for p in merged.pieces[n:])
    assert merged.normalizer_spec == base.normalizer_spec and merged.trainer_spec.byte_fallback


def test_non_tibetan_encodings_unchanged(sp_base, sp_base_tok, sp_extended_dir, sp_extended, flores):
    base_sp, ext_sp = processor(sp_base / "tokenizer.model"), processor(sp_extended_dir / "tokenizer.model")
    ext_vocab = sp_extended.get_vocab()
    assert all(ext_vocab[tok] == i for tok, i in sp_base_tok.get_vocab().items())
    for lang in ("zh", "en"):
        reference = base_sp.encode(flores[lang])
        assert ext_sp.encode(flores[lang]) == reference, lang
        assert sp_extended(flores[lang], add_special_tokens=False)["input_ids"] == reference, lang
        assert sp_extended(flores[lang])["input_ids"] == sp_base_tok(flores[lang])["input_ids"], lang


@pytest.mark.parametrize("lang", ["bo", "zh", "en"])
def test_round_trip(sp_extended, flores, lang):
    ids = sp_extended(flores[lang], add_special_tokens=False)["input_ids"]
    decoded = sp_extended.batch_decode(ids)
    bad = [i for i, (a, b) in enumerate(zip(decoded, flores[lang])) if a != b]
    assert not bad, f"{len(bad)} FLORES dev {lang} lines do not round-trip, first: line {bad[0] + 1}"


def test_slow_and_fast_agree(sp_extended_dir, sp_extended, flores):
    """sentencepiece on tokenizer.model, tokenizers on tokenizer.json and AutoTokenizer give the same ids."""
    from tokenizers import Tokenizer

    slow = processor(sp_extended_dir / "tokenizer.model")
    fast = Tokenizer.from_file(str(sp_extended_dir / "tokenizer.json"))
    bo = flores["bo"]
    reference = slow.encode(bo)
    assert [e.ids for e in fast.encode_batch(bo, add_special_tokens=False)] == reference
    assert sp_extended(bo, add_special_tokens=False)["input_ids"] == reference
    assert min(map(len, reference)) > 0


def test_byte_fallback_for_unseen_tibetan(sp_extended_dir, sp_extended):
    vocab = sp_extended.get_vocab()
    unseen = [c for c in map(chr, range(0x0F00, 0x1000))  # symbols and digits: no mark reordering around them
              if unicodedata.category(c)[0] in "SPN" and normalize(c) == c and c not in vocab and "▁" + c not in vocab]
    assert len(unseen) >= 3
    text = normalize("བོད་" + "".join(unseen[:3]) + "་ཡིག")
    slow = processor(sp_extended_dir / "tokenizer.model")
    ids = slow.encode(text)
    byte_ids = [slow.piece_to_id(f"<0x{b:02X}>") for b in "".join(unseen[:3]).encode("utf-8")]
    assert slow.unk_id() not in ids
    assert any(ids[k:k + len(byte_ids)] == byte_ids for k in range(len(ids)))  # the unseen characters as bytes
    assert sp_extended(text, add_special_tokens=False)["input_ids"] == ids
    assert sp_extended.decode(ids) == slow.decode(ids) == text


def test_saved_directory(sp_extended_dir, sp_extended, sp_base_tok, sp_base):
    ext = load_extension(sp_extended_dir)
    n = len(sp_base_tok)
    assert ext["base"] == str(sp_base.resolve()) and ext["base_kind"] == SENTENCEPIECE
    assert ext["base_vocab_size"] == n == ext["new_token_ids"][0]
    assert ext["num_new_tokens"] == NEW_PIECES and ext["new_token_ids"][1] == ext["vocab_size"] == len(sp_extended)
    assert ext["piece_type"] == "bpe" and ext["selection"]["new_pieces"] == NEW_PIECES
    assert {"tokenizer.model", "tokenizer.json", "tokenizer_config.json", "extension.json"} <= {
        p.name for p in sp_extended_dir.iterdir()}
    assert sp_extended.chat_template == sp_base_tok.chat_template == CHAT_TEMPLATE
    for name in ("bos_token", "eos_token", "unk_token", "pad_token"):
        assert getattr(sp_extended, name) == getattr(sp_base_tok, name), name
    assert sp_extended.all_special_ids == sp_base_tok.all_special_ids
    assert load_tokenizer(str(sp_extended_dir)).get_vocab() == sp_extended.get_vocab()


def test_fertility(sp_base_tok, sp_extended, shared_data):
    bo = shared_data / "eval" / "flores200.dev.bo"
    before, after = fertility(sp_base_tok, bo), fertility(sp_extended, bo)
    assert before["syllables"] == after["syllables"] > 30000
    assert after["tokens_per_syllable"] < 0.2 * before["tokens_per_syllable"]
    # the base has no Tibetan: every Tibetan character fell back to bytes; the extension covers most
    assert before["byte_fallback_lines"] == before["lines"]
    assert after["byte_fallback_tokens"] < 0.01 * before["byte_fallback_tokens"]


def test_subtoken_mean_init(sp_base, sp_base_tok, sp_extended):
    """A new row is the mean of the base rows of the base model's cut of the piece, the reference being
    ``sentencepiece`` on the base model without a dummy prefix (a piece is cut as inside a text)."""
    torch.manual_seed(0)
    embedding = torch.randn(BASE_PIECES, 8, dtype=torch.float64)
    out = init_new_embeddings(sp_base_tok, sp_extended, embedding, "subtoken_mean", BASE_PIECES + NEW_PIECES + 24)
    assert torch.equal(out[:BASE_PIECES], embedding)
    assert torch.equal(out[BASE_PIECES + NEW_PIECES:], torch.zeros(24, 8, dtype=torch.float64))
    reference = processor(sp_base / "tokenizer.model", add_dummy_prefix=False)
    pieces = sp_extended.convert_ids_to_tokens(list(range(BASE_PIECES, BASE_PIECES + NEW_PIECES)))
    for t, piece in enumerate(pieces, start=BASE_PIECES):
        ids = reference.encode(piece.replace("▁", " "))
        assert base_subtoken_ids(sp_base_tok, sp_extended, t) == ids, piece
        torch.testing.assert_close(out[t], embedding[ids].mean(0), rtol=0, atol=1e-12)


def _hf_logits(hf_dir: Path, ids: torch.Tensor) -> torch.Tensor:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(hf_dir), dtype=torch.float32).eval()
    with torch.no_grad():
        return model(ids).logits


def test_conversion_resizes_with_subtoken_mean(sp_base, sp_base_tok, sp_extended_dir, sp_extended, tmp_path):
    """A tiny random Llama on the SentencePiece base, imported with the extended tokenizer and exported:
    logits on base ids bit-identical to the original model's, base rows unchanged, new rows the sub-token mean."""
    from safetensors.torch import load_file
    from transformers import LlamaConfig, LlamaForCausalLM

    from megatron_tibetan.convert import export_hf, import_hf

    torch.manual_seed(1)
    config = LlamaConfig(vocab_size=BASE_PIECES, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                         tie_word_embeddings=False)
    LlamaForCausalLM(config).save_pretrained(tmp_path / "hf")
    sp_base_tok.save_pretrained(tmp_path / "hf")
    import_hf(tmp_path / "hf", tmp_path / "mg", tp=1, pp=1, tokenizer=str(sp_extended_dir), init_method="subtoken_mean")
    export_hf(tmp_path / "mg", tmp_path / "back")
    assert (tmp_path / "back" / "tokenizer.model").is_file()  # the export keeps the SentencePiece model file

    original, exported = load_file(str(tmp_path / "hf" / "model.safetensors")), load_file(str(tmp_path / "back" / "model.safetensors"))
    n, total = BASE_PIECES, BASE_PIECES + NEW_PIECES
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        assert exported[name].shape[0] == total, name
        assert torch.equal(exported[name][:n], original[name]), name
        expected = init_new_embeddings(sp_base_tok, sp_extended, original[name], "subtoken_mean", total)
        assert torch.equal(exported[name][n:], expected[n:]) and exported[name][n:].abs().sum() > 0, name
    assert len(AutoTokenizer.from_pretrained(str(tmp_path / "back"))) == total

    text = "Tibetan ད་ལྟ་ hello 你好"
    ids = torch.tensor([sp_base_tok(text)["input_ids"][:24]])
    assert ids.max() < n
    assert torch.equal(_hf_logits(tmp_path / "back", ids)[..., :n], _hf_logits(tmp_path / "hf", ids))


def test_unigram_pieces(sp_base, sp_base_tok, shared_data, flores, tmp_path):
    extension = extend_tokenizer(str(sp_base), [shared_data / "mono" / "nanhai.bo.txt.xz"], 200, tmp_path,
                                 max_lines_per_file=1000, piece_type="unigram")
    assert extension["piece_type"] == "unigram" and extension["num_new_tokens"] == 200
    tok = AutoTokenizer.from_pretrained(str(tmp_path))
    slow = processor(tmp_path / "tokenizer.model")
    bo = flores["bo"][:300]
    assert tok(bo, add_special_tokens=False)["input_ids"] == slow.encode(bo)
    assert tok.batch_decode(slow.encode(bo)) == bo
    for lang in ("zh", "en"):
        assert tok(flores[lang][:300])["input_ids"] == sp_base_tok(flores[lang][:300])["input_ids"], lang


def test_errors(sp_base, en_zh, shared_data, tmp_path):
    nanhai = [shared_data / "mono" / "nanhai.bo.txt.xz"]
    no_fallback = train_sp(en_zh, tmp_path / "no_fallback.model", BASE_PIECES, byte_fallback=False)
    with pytest.raises(ValueError, match="no byte fallback.*would become <unk>"):
        extend_tokenizer(str(no_fallback), nanhai, 50, tmp_path / "a", max_lines_per_file=200)
    unigram = train_sp(en_zh, tmp_path / "unigram.model", BASE_PIECES, model_type="unigram")
    with pytest.raises(ValueError, match="unigram model"):
        extend_tokenizer(str(unigram), nanhai, 50, tmp_path / "b", max_lines_per_file=200)
    english = [shared_data / "parallel" / "ntrex128.en.xz"]
    with pytest.raises(ValueError, match="no Tibetan text in 1997 lines"):
        extend_tokenizer(str(sp_base), english, 50, tmp_path / "c")
    with pytest.raises(ValueError, match="no Tibetan text in 300 lines"):
        extend_tokenizer("smollm2", english, 50, tmp_path / "d", max_lines_per_file=300)
    with pytest.raises(ValueError, match="unit: byte-level BPE settings"):
        extend_tokenizer(str(sp_base), nanhai, 50, tmp_path / "e", unit="syllable")
    with pytest.raises(ValueError, match="piece_type: a SentencePiece setting"):
        extend_tokenizer("smollm2", nanhai, 50, tmp_path / "f", piece_type="unigram")

    added = tmp_path / "added"  # an HF base with a token past the SentencePiece vocabulary
    tok = AutoTokenizer.from_pretrained(str(sp_base))
    tok.add_special_tokens({"pad_token": "<pad>"})
    tok.save_pretrained(str(added))
    (added / "tokenizer.model").write_bytes((sp_base / "tokenizer.model").read_bytes())
    with pytest.raises(ValueError, match="4001 tokens but .* 4000 pieces"):
        extend_tokenizer(str(added), nanhai, 50, tmp_path / "g", max_lines_per_file=200)
    assert not any((tmp_path / d).exists() for d in "abcdefg")


def test_tools(sp_base, sp_extended_dir, shared_data, tmp_path):
    """tools/extend_tokenizer.py on a SentencePiece base; a bad base is one line on stderr and exit 1;
    tools/tokenizer_fertility.py on the result."""
    tool = ROOT / "tools" / "extend_tokenizer.py"
    run = subprocess.run([sys.executable, str(tool), "--base", str(sp_base), "--num-new-tokens", "200",
                          "--output", str(tmp_path / "tok"), "--corpus", str(shared_data / "mono" / "nanhai.bo.txt.xz"),
                          "--max-lines-per-file", "500", "--piece-type", "bpe"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert load_extension(tmp_path / "tok")["num_new_tokens"] == 200
    from tokenizers import Tokenizer, models

    Tokenizer(models.WordPiece({"[UNK]": 0, "a": 1}, unk_token="[UNK]")).save(str(tmp_path / "wordpiece.json"))
    bad = subprocess.run([sys.executable, str(tool), "--base", str(tmp_path / "wordpiece.json"),
                          "--num-new-tokens", "10", "--output", str(tmp_path / "bad"), "--corpus",
                          str(shared_data / "mono" / "nanhai.bo.txt.xz")], capture_output=True, text=True, timeout=300)
    errors = [line for line in bad.stderr.splitlines() if "error" in line.lower()]
    assert bad.returncode == 1 and "Traceback" not in bad.stderr and errors[-1].startswith("extend_tokenizer: error:"), bad.stderr

    spec = importlib.util.spec_from_file_location("tokenizer_fertility", ROOT / "tools" / "tokenizer_fertility.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "f.json"
    sys_argv = sys.argv
    try:
        sys.argv = ["tokenizer_fertility.py", "--tokenizer", str(sp_extended_dir), "--input",
                    str(shared_data / "eval" / "tatoeba.bo-en.bo"), "--output", str(out)]
        assert module.main() == 0
    finally:
        sys.argv = sys_argv
    result = json.loads(out.read_text())
    assert result["vocab_size"] == BASE_PIECES + NEW_PIECES
    assert result["files"][0]["lines"] == 38 and result["files"][0]["tokens_per_syllable"] > 0
