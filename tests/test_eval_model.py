"""Model-based evaluation on a tiny random Llama: perplexity and bits per byte against an independent
computation from transformers logits; batched chat-template translation."""

import copy
import math

import pytest
import torch

from megatron_tibetan.evaluation.perplexity import document_start_id, perplexity, windows
from megatron_tibetan.text import normalize


@pytest.fixture(scope="module")
def tiny(tiny_llama_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(tiny_llama_dir)


def _reference_nll(model, ids, max_length, stride):
    """Sum over targets p of -log p(ids[p] | ids[b(p):p]), b(p) the start of the first window holding p."""
    total = 0.0
    with torch.no_grad():
        for p in range(1, len(ids)):
            k = 0 if p < max_length else math.ceil((p - max_length + 1) / stride)
            context = torch.tensor([ids[k * stride : p]])
            logits = model(input_ids=context).logits[0, -1].double()
            total -= torch.log_softmax(logits, -1)[ids[p]].item()
    return total


def _ids(tok, text):
    return [document_start_id(tok)] + tok(normalize(text), add_special_tokens=False)["input_ids"]


def test_perplexity_equals_transformers_logits(tiny, shared_data):
    model, tok = tiny
    lines = (shared_data / "eval" / "flores200.dev.bo").read_text(encoding="utf-8").splitlines()[:3]
    lines.append("Hello, world.")
    got = perplexity(model, tok, lines, max_length=1024, stride=512, progress=False)
    ref_nll, ref_tokens = 0.0, 0
    with torch.no_grad():
        for line in lines:  # each line fits the context: one plain forward per document
            ids = _ids(tok, line)
            assert len(ids) <= 1024
            logp = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].double(), -1)
            ref_nll -= logp[torch.arange(len(ids) - 1), torch.tensor(ids[1:])].sum().item()
            ref_tokens += len(ids) - 1
    assert got.tokens == ref_tokens
    assert got.nll == pytest.approx(ref_nll, rel=1e-5)
    assert got.perplexity == pytest.approx(math.exp(ref_nll / ref_tokens), rel=1e-5)


def test_sliding_window_counts_each_token_once(tiny, shared_data):
    model, tok = tiny
    line = (shared_data / "eval" / "flores200.dev.bo").read_text(encoding="utf-8").splitlines()[0][:45]
    ids = _ids(tok, line)
    max_length, stride = 32, 12
    assert len(ids) > 3 * max_length
    spans = windows(len(ids), max_length, stride)
    scored = [p for _, end, first in spans for p in range(first, end)]
    assert scored == list(range(1, len(ids)))
    got = perplexity(model, tok, [line], max_length=max_length, stride=stride, batch_tokens=100, progress=False)
    assert got.tokens == len(ids) - 1
    assert got.nll == pytest.approx(_reference_nll(model, ids, max_length, stride), rel=1e-5)
    # a different window really changes the figure (the test can fail)
    whole = perplexity(model, tok, [line], max_length=1024, stride=512, progress=False)
    assert whole.nll != pytest.approx(got.nll, rel=1e-7)


def test_bits_per_byte_by_hand(tiny):
    model, tok = tiny
    text = "  བཀྲ་ཤིས་\u200b  བདེ་ལེགས།  "
    norm = normalize(text)
    assert norm == "བཀྲ་ཤིས་བདེ་ལེགས།"
    got = perplexity(model, tok, [text, "   "], progress=False)
    assert got.bytes == 3 * 17 == len(norm.encode("utf-8"))
    assert got.skipped_empty == 1 and got.documents == 1
    assert got.bits_per_byte == pytest.approx(got.nll / math.log(2) / 51, rel=1e-12)
    assert got.nll_per_token == pytest.approx(math.log(got.perplexity), rel=1e-12)


def test_bad_stride():
    with pytest.raises(ValueError, match="stride"):
        windows(100, 32, 32)


def test_batched_translation_equals_one_by_one(tiny, shared_data):
    from megatron_tibetan.data.chat import ChatEncoder
    from megatron_tibetan.evaluation.translate import chat_inputs, stop_ids, translate

    model, tok = tiny
    encoder = ChatEncoder(tok)
    sources = (shared_data / "eval" / "flores200.dev.zh").read_text(encoding="utf-8").splitlines()[:3]
    sources[1] = sources[1][:10]  # unequal lengths exercise the left padding
    got = translate(model, encoder, sources, "zh", batch_size=3, max_new_tokens=6, progress=False)
    assert len(got) == 3 and all("\n" not in h for h in got)
    assert "<|im_start|>user" in tok.decode(chat_inputs(encoder, sources[:1], "zh")[0])
    stops = stop_ids(tok)
    for source, hyp in zip(sources, got):
        ids = torch.tensor(chat_inputs(encoder, [source], "zh"))
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=6, do_sample=False,
                             eos_token_id=stops, pad_token_id=stops[0])[0, ids.shape[1]:].tolist()
        out = out[: next((k for k, t in enumerate(out) if t in stops), len(out))]
        assert hyp == " ".join(tok.decode(out, skip_special_tokens=True).split())
    beams = translate(model, encoder, sources, "zh", num_beams=2, batch_size=2, max_new_tokens=6, progress=False)
    assert len(beams) == 3


def test_length_cap_from_the_source(tiny, shared_data):
    """A cap of ratio x source characters gives each line what uncapped greedy output cut at its own cap
    gives, and stops generating early (checked by a step count)."""
    from megatron_tibetan.data.chat import ChatEncoder
    from megatron_tibetan.evaluation.translate import character_caps, translate

    model, tok = copy.deepcopy(tiny[0]), tiny[1]
    with torch.no_grad():  # the random model's greedy choice is a newline, which leaves nothing to cut: take it away
        model.get_output_embeddings().weight[tok.convert_tokens_to_ids("Ċ")] = 0
    encoder = ChatEncoder(tok)
    sources = (shared_data / "eval" / "flores200.dev.en").read_text(encoding="utf-8").splitlines()[:4]
    sources[0], sources[2] = sources[0][:6], sources[2][:15]  # short lines meet their cap before the token budget
    ratio = 0.5
    caps = character_caps(sources, ratio)
    assert caps == [max(1, math.ceil(ratio * len(normalize(s)))) for s in sources]
    free = translate(model, encoder, sources, "en", batch_size=4, max_new_tokens=40, progress=False)
    calls = []
    original = model.forward
    model.forward = lambda *a, **k: calls.append(1) or original(*a, **k)
    try:
        capped = translate(model, encoder, sources, "en", batch_size=4, max_new_tokens=40, progress=False, max_length_ratio=ratio)
    finally:
        del model.forward
    # the random model writes past every cap in 40 tokens (checked, so the test can fail), and stops early once all are met
    assert all(len(" ".join(f.split())) > c for f, c in zip(free, caps))
    assert capped == [" ".join(f[:c].split()) for f, c in zip(free, caps)]
    assert len(calls) < 40
    beams = translate(model, encoder, sources, "en", num_beams=2, batch_size=4, max_new_tokens=12, progress=False, max_length_ratio=ratio)
    assert all(len(b) <= c for b, c in zip(beams, caps))
    with pytest.raises(ValueError, match="positive"):
        character_caps(sources, 0)
