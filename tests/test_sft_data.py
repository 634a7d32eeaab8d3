"""SFT data: prompts in one place; the answer-only loss mask on real rendered examples of SmolLM2's and
Qwen2.5's chat templates (Qwen2.5-Instruct's own, which injects a default system prompt, and the
preset's plain ChatML) and the plain template, checked against the tokenizer and template called
directly; multi-turn; packing (first-fit-decreasing against a naive reference, boundaries, position
ids, and the packed loss of a real model equal to its per-example losses); padded, length-bucketed
items and per-epoch order; counts that balance against an independent recount; errors naming
file:line; and tools/prepare_sft.py end to end on NTREX read back through megatron-core."""

import importlib.util
import json
import lzma
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from megatron_tibetan.data.chat import PLAIN_TEMPLATE, ChatEncoder, ChatTemplateError, SpecialTokenError
from megatron_tibetan.data.prompts import PHRASINGS, draw_phrasing, phrasings, translation_messages, translation_prompt
from megatron_tibetan.data.sft import SFTDataConfig, prepare_sft
from megatron_tibetan.data.sft_dataset import (
    EpochSamples, SFTDataset, block_causal_mask, packed_seq_params, split_prefix, trim_padding,
)
from megatron_tibetan.data.sft_pack import first_fit_decreasing, packing_efficiency
from megatron_tibetan.text import normalize
from megatron_tibetan.text.readers import InputError, read_lines

ROOT = Path(__file__).resolve().parents[1]
N_LINES = 40  # NTREX lines per test

# Qwen2.5-Instruct's chat template as its tokenizer_config.json ships it: a default system prompt
# whenever the conversation has none.
QWEN25_INSTRUCT_TEMPLATE = r"""{%- if tools %}
    {{- '<|im_start|>system\n' }}
    {%- if messages[0]['role'] == 'system' %}
        {{- messages[0]['content'] }}
    {%- else %}
        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}
    {%- endif %}
    {{- "\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>" }}
    {%- for tool in tools %}
        {{- "\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n" }}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\n' + messages[0]['content'] + '<|im_end|>\n' }}
    {%- else %}
        {{- '<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>' + '\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role }}
        {%- if message.content %}
            {{- '\n' + message.content }}
        {%- endif %}
        {%- for tool_call in message.tool_calls %}
            {%- if tool_call.function is defined %}
                {%- set tool_call = tool_call.function %}
            {%- endif %}
            {{- '\n<tool_call>\n{"name": "' }}
            {{- tool_call.name }}
            {{- '", "arguments": ' }}
            {{- tool_call.arguments | tojson }}
            {{- '}\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\n' }}
    {%- elif message.role == "tool" %}
        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\n<tool_response>\n' }}
        {{- message.content }}
        {{- '\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
{%- endif %}
"""
DEFAULT_SYSTEM = {"smollm2": "You are a helpful AI assistant named SmolLM", "qwen2.5-instruct": "You are Qwen, created by Alibaba Cloud"}


def _tokenizer(spec):
    from megatron_tibetan.tokenizer.base import load_tokenizer

    return load_tokenizer(spec)


@pytest.fixture(scope="module")
def tokenizers():
    """name -> (tokenizer, template text or None for the tokenizer's own): both presets with their own
    templates, Qwen2.5-Instruct's template, and the plain template for a base model."""
    smollm2, qwen = _tokenizer("smollm2"), _tokenizer("qwen2.5")
    return {"smollm2": (smollm2, None), "qwen2.5": (qwen, None), "qwen2.5-instruct": (qwen, QWEN25_INSTRUCT_TEMPLATE),
            "plain": (qwen, PLAIN_TEMPLATE)}


def _encoder(variant, train_on="all"):
    tok, template = variant
    if template is PLAIN_TEMPLATE:
        return ChatEncoder(tok, "plain", train_on)
    return ChatEncoder(tok, "model", train_on, chat_template=template)


@pytest.fixture(scope="module")
def ntrex(shared_data):
    par = shared_data / "parallel"
    return {lang: [normalize(t) for t in read_lines(par / f"ntrex128.{lang}.xz", limit=N_LINES)] for lang in ("zh", "en", "bo")}


def _render(tok, template, messages, generation=False):
    """The template (None: the tokenizer's own) called directly: the reference the encoder is checked against."""
    return tok.apply_chat_template(messages, chat_template=template, add_generation_prompt=generation, tokenize=False)


def _runs(flags):
    """[start, end) of each run of True."""
    edges = np.flatnonzero(np.diff(np.concatenate([[0], flags.astype(np.int8), [0]])))
    return list(zip(edges[::2].tolist(), edges[1::2].tolist()))


def check_answer_only(tok, template, messages, ids, target, turns):
    """Fails unless exactly the assistant turns ``turns`` (content + end-of-turn token) are trained: each
    trained run decodes to that content + end-of-turn, its ids are the tokenizer's own ids of the
    content followed by one end-of-turn token, and the untrained ids before it are the tokenizer's ids
    of the inference prompt (the template rendered up to the turn, with the generation prompt)."""
    ids, target = np.asarray(ids), np.asarray(target, dtype=bool)
    runs = _runs(target)
    assert len(runs) == len(turns), f"{len(runs)} trained runs for {len(turns)} assistant turns"
    eot_tokens = {"<|im_end|>", tok.eos_token}
    for (a, b), i in zip(runs, turns):
        content = messages[i]["content"]
        eot = tok.convert_ids_to_tokens(int(ids[b - 1]))
        assert eot in eot_tokens, f"turn {i} ends with {eot!r}, not an end-of-turn token"
        assert tok.decode(ids[a:b]) == content + eot
        assert ids[a : b - 1].tolist() == tok(content, add_special_tokens=False)["input_ids"]
        prompt = _render(tok, template, messages[:i], generation=True)
        assert ids[:a].tolist() == tok(prompt, add_special_tokens=False)["input_ids"]


def _pair_conversations(ntrex):
    out = []
    for k in range(N_LINES):
        for src_lang, tgt_lang, src, tgt in (("zh", "bo", ntrex["zh"][k], ntrex["bo"][k]),
                                             ("en", "bo", ntrex["en"][k], ntrex["bo"][k]),
                                             ("bo", "zh", ntrex["bo"][k], ntrex["zh"][k])):
            index = draw_phrasing(src_lang, tgt_lang, 0, src)
            out.append([{"role": "user", "content": translation_prompt(src, src_lang, tgt_lang, index)},
                        {"role": "assistant", "content": tgt}])
    return out


# ---------------------------------------------------------------------------------------------- prompts

def test_phrasings_live_in_one_place_and_evaluation_uses_the_first():
    assert set(PHRASINGS) == {("zh", "bo"), ("en", "bo"), ("bo", "zh"), ("bo", "en")}
    assert len(phrasings("zh", "bo")) == 14 and len(phrasings("en", "bo")) == 7 and len(phrasings("bo", "zh")) == 14
    for direction, items in PHRASINGS.items():
        assert len(set(items)) == len(items)
        for p in items:
            assert p.format(text="§SOURCE§").count("§SOURCE§") == 1
    chinese = [p for p in phrasings("zh", "bo") if "藏文" in p]
    assert len(chinese) == 7  # written in the source language as well as in English
    text = "你好"
    # the evaluation prompt is the first phrasing, the one the project has always evaluated with
    assert translation_prompt(text, "zh") == translation_prompt(text, "zh", "bo", 0) == \
        "Translate the following Chinese text into Tibetan. Reply with the translation only.\n\n你好"
    assert translation_messages(text, "en") == [{"role": "user", "content": translation_prompt(text, "en", "bo", 0)}]
    with pytest.raises(ValueError, match="unknown language code 'fr'"):
        translation_prompt(text, "fr")


def test_phrasing_draw_is_fixed_by_seed_and_pair_and_covers_all(ntrex):
    draws = [draw_phrasing("zh", "bo", 7, s) for s in ntrex["zh"]]
    assert draws == [draw_phrasing("zh", "bo", 7, s) for s in ntrex["zh"]]
    assert draws != [draw_phrasing("zh", "bo", 8, s) for s in ntrex["zh"]]
    many = [draw_phrasing("zh", "bo", 0, str(k)) for k in range(2800)]
    counts = np.bincount(many, minlength=14)
    assert len(counts) == 14 and counts.min() > 150  # about 200 each


# ---------------------------------------------------------------------------------------------- masking

@pytest.mark.parametrize("name", ["smollm2", "qwen2.5", "qwen2.5-instruct", "plain"])
def test_only_answer_and_end_of_turn_are_trained_on_real_examples(tokenizers, ntrex, name):
    tok, template = tokenizers[name]
    encoder = _encoder(tokenizers[name])
    conversations = _pair_conversations(ntrex)
    for messages, enc in zip(conversations, encoder.encode_many(conversations)):
        check_answer_only(tok, template, messages, enc.ids, enc.target, [1])
        assert not enc.retokenized
        assert enc.text == _render(tok, template, messages)
        untrained = tok.decode(enc.ids[~enc.target])
        assert messages[0]["content"] in untrained  # the prompt is never trained
        if name in DEFAULT_SYSTEM:  # the template's default system prompt is there, and not trained
            assert DEFAULT_SYSTEM[name] in untrained and DEFAULT_SYSTEM[name] not in tok.decode(enc.ids[enc.target])


def test_the_mask_check_fails_on_a_wrong_mask(tokenizers, ntrex):
    tok, template = tokenizers["qwen2.5-instruct"]
    messages = _pair_conversations(ntrex)[0]
    enc = _encoder(tokenizers["qwen2.5-instruct"]).encode(messages)
    a, b = _runs(enc.target)[0]
    for wrong in (a - 1, b - 1, a, 0):  # a template newline, the end-of-turn, the first answer token, the system prompt
        target = enc.target.copy()
        target[wrong] = not target[wrong]
        with pytest.raises(AssertionError):
            check_answer_only(tok, template, messages, enc.ids, target, [1])
    ids = np.append(enc.ids, tok.pad_token_id)  # a trained padding token
    with pytest.raises(AssertionError):
        check_answer_only(tok, template, messages, ids, np.append(enc.target, True), [1])


@pytest.mark.parametrize("name", ["smollm2", "qwen2.5-instruct", "plain"])
@pytest.mark.parametrize("train_on", ["all", "last"])
@pytest.mark.parametrize("system", [False, True])
def test_multi_turn(tokenizers, ntrex, name, train_on, system):
    tok, template = tokenizers[name]
    messages = [{"role": "system", "content": "ཁྱེད་ནི་ལོ་ཙཱ་བ་ཡིན།"}] if system else []
    for k in range(3):
        messages += [{"role": "user", "content": translation_prompt(ntrex["en"][k], "en", "bo")},
                     {"role": "assistant", "content": ntrex["bo"][k]}]
    enc = _encoder(tokenizers[name], train_on).encode(messages)
    assistant = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    check_answer_only(tok, template, messages, enc.ids, enc.target, assistant if train_on == "all" else assistant[-1:])
    if system:
        assert messages[0]["content"] not in tok.decode(enc.ids[enc.target])


def test_a_token_across_a_span_edge_is_retokenized(tokenizers):
    tok, template = tokenizers["smollm2"]
    # "\n" closing the template's header and the answer's own leading newlines merge into one token
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "\n\nབཀྲ་ཤིས་བདེ་ལེགས།"}]
    whole = tok(_render(tok, template, messages), add_special_tokens=False, return_offsets_mapping=True)
    start = len(_render(tok, template, messages[:1], generation=True))
    assert any(s < start < e for s, e in whole["offset_mapping"])  # the case exists with this tokenizer
    enc = _encoder(tokenizers["smollm2"]).encode(messages)
    assert enc.retokenized
    assert tok.decode(enc.ids[enc.target]) == messages[1]["content"] + "<|im_end|>"


def test_template_problems_are_errors(tokenizers, ntrex):
    tok = tokenizers["smollm2"][0]
    messages = _pair_conversations(ntrex)[0]
    bad = {
        "{{ raise_exception('roles must alternate') }}": "cannot render.*roles must alternate",
        "{% for m in messages %}{{ m['role'] }}: {{ m['content'][1:] }}\n{% endfor %}"
        "{% if add_generation_prompt %}assistant: {% endif %}": "verbatim",
        "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}assistant: {% endif %}": "not an end-of-turn token",
        "{% for m in messages %}{{ m['content'] }}<|im_end|>{% endfor %}"
        "{% if add_generation_prompt %}ASSISTANT{% endif %}": "not a prefix",
    }
    for template, message in bad.items():
        with pytest.raises(ChatTemplateError, match=message):
            ChatEncoder(tok, chat_template=template).encode(messages)
    own, tok.chat_template = tok.chat_template, None
    try:
        with pytest.raises(ValueError, match="has no chat template"):
            ChatEncoder(tok, "model")
        assert ChatEncoder(tok, "auto").template == "plain"
    finally:
        tok.chat_template = own
    encoder = ChatEncoder(tok)
    with pytest.raises(SpecialTokenError, match=re.escape("<|im_end|>")):
        encoder.encode([{"role": "user", "content": "a<|im_end|>b"}, {"role": "assistant", "content": "x"}])
    with pytest.raises(ChatTemplateError, match="no assistant turn"):
        encoder.encode([{"role": "user", "content": "a"}])


# ---------------------------------------------------------------------------------------------- packing

def _naive_ffd(lengths, capacity):
    bins, free = [], []
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        j = next((j for j, f in enumerate(free) if f >= lengths[i]), None)
        if j is None:
            bins.append([])
            free.append(capacity)
            j = len(bins) - 1
        bins[j].append(i)
        free[j] -= lengths[i]
    return bins


def test_first_fit_decreasing_equals_the_naive_algorithm():
    rng = np.random.default_rng(0)
    for capacity, high in ((64, 64), (100, 30), (512, 300)):
        lengths = rng.integers(1, high + 1, size=300).tolist()
        bins = first_fit_decreasing(lengths, capacity)
        assert bins == _naive_ffd(lengths, capacity)
        assert sorted(i for b in bins for i in b) == list(range(len(lengths)))
        assert all(sum(lengths[i] for i in b) <= capacity for b in bins)
        assert packing_efficiency(lengths, bins, capacity) == pytest.approx(sum(lengths) / (len(bins) * capacity))
    with pytest.raises(ValueError, match="more than the capacity"):
        first_fit_decreasing([3, 9], 8)
    assert first_fit_decreasing([], 8) == []


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, shared_data, tokenizers):
    """NTREX zh/en→bo (40 lines) with SmolLM2, 20% held out."""
    tmp = tmp_path_factory.mktemp("sft")
    par = shared_data / "parallel"
    files = {}
    for lang in ("zh", "en", "bo"):
        files[lang] = tmp / f"ntrex.{lang}"
        files[lang].write_text("\n".join(read_lines(par / f"ntrex128.{lang}.xz", limit=N_LINES)) + "\n", encoding="utf-8")
    config = SFTDataConfig(output_prefix=str(tmp / "out" / "ntrex"), tokenizer="smollm2",
                           pairs=(("zh", str(files["zh"]), str(files["bo"])), ("en", str(files["en"]), str(files["bo"]))),
                           valid_fraction=0.2, max_length=512, reverse_share=0.25, seed=3, progress=False)
    return config, prepare_sft(config, tokenizers["smollm2"][0])


def _records(prefix, split):
    return [json.loads(line) for line in Path(f"{prefix}_{split}.jsonl").read_text(encoding="utf-8").splitlines()]


def test_packed_items_boundaries_positions_labels(prepared, tokenizers):
    config, stats = prepared
    tok = tokenizers["smollm2"][0]
    S = 1024
    data = SFTDataset(config.output_prefix, "train", S, pack=True)
    records = _records(config.output_prefix, "train")
    assert data.num_examples == len(records) == stats["examples_out"]["train"]
    assert data.efficiency == pytest.approx(stats["splits"]["train"]["positions"] / (len(data) * S))
    seen = []
    for k in range(len(data)):
        item = data[k]
        cu = item["cu_seqlens"].tolist()
        assert item["cu_seqlens"].dtype == torch.int32 and cu[0] == 0 and cu[-1] == S
        assert int(item["max_seqlen"]) == max(b - a for a, b in zip(cu, cu[1:]))
        for j, i in enumerate(data.packs[k]):
            a, b = cu[j], cu[j + 1]
            ids, trained = data.example(i)
            assert item["position_ids"][a:b].tolist() == list(range(b - a))
            assert item["tokens"][a:b].tolist() == ids[:-1].tolist() and item["labels"][a:b].tolist() == ids[1:].tolist()
            mask = item["loss_mask"][a:b].numpy().astype(bool)
            # the trained targets decode to the answer + end-of-turn; the example is the one in the JSONL
            messages = records[i]["messages"]
            assert tok.decode(item["labels"][a:b][mask]) == messages[-1]["content"] + "<|im_end|>"
            check_answer_only(tok, None, messages, ids, trained, [1])
            seen.append(i)
        tail = slice(sum(len(data.example(i)[0]) - 1 for i in data.packs[k]), S)
        assert not item["loss_mask"][tail].any()  # padding never in the loss
        assert (item["tokens"][tail] == tok.eos_token_id).all()
        if tail.start < S:
            assert item["position_ids"][tail].tolist() == list(range(S - tail.start))
    assert sorted(seen) == list(range(len(records)))
    params = packed_seq_params({k: v[None] for k, v in data[0].items()})
    assert params.qkv_format == "thd" and params.cu_seqlens_q is params.cu_seqlens_kv
    assert params.max_seqlen_q == int(data[0]["max_seqlen"])


def test_packed_loss_equals_per_example_losses_of_a_real_model(prepared, tiny_llama_dir):
    """A tiny random Llama (transformers): the loss on one packed item, attention kept inside each
    example by the block-causal mask and positions restarting, equals the token-weighted mean of the
    per-example losses transformers computes one example at a time (prompt tokens labelled -100)."""
    from transformers import AutoModelForCausalLM

    config, _ = prepared
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32).eval()
    data = SFTDataset(config.output_prefix, "train", 1024, pack=True)
    k = max(range(len(data)), key=lambda k: len(data.packs[k]))
    item = data[k]
    assert len(data.packs[k]) >= 2
    allowed = ~block_causal_mask(item["cu_seqlens"], 1024)
    with torch.no_grad():
        logits = model(item["tokens"][None], attention_mask=allowed, position_ids=item["position_ids"][None]).logits[0]
        per_token = torch.nn.functional.cross_entropy(logits, item["labels"], reduction="none")
        packed = (per_token * item["loss_mask"]).sum() / item["loss_mask"].sum()
        total, count = 0.0, 0
        for i in data.packs[k]:
            ids, trained = data.example(i)
            labels = torch.tensor(np.where(trained, ids, -100))
            out = model(torch.tensor(ids)[None], labels=labels[None])
            n = int(trained[1:].sum())
            total, count = total + out.loss.item() * n, count + n
    assert packed.item() == pytest.approx(total / count, rel=1e-5)
    assert count == int(item["loss_mask"].sum())


def test_padded_items_bucketing_and_epochs(prepared):
    config, _ = prepared
    data = SFTDataset(config.output_prefix, "train", 512, pack=False)
    n = len(data)
    assert n == data.num_examples
    item = data[0]
    length = int(item["length"])
    assert not item["loss_mask"][length:].any() and item["loss_mask"][:length].any()
    assert item["position_ids"].tolist() == list(range(512))
    first = data.order(0, seed=5, micro_batch_size=4)
    assert sorted(first.tolist()) == list(range(n))
    assert np.array_equal(first, data.order(0, seed=5, micro_batch_size=4))
    assert not np.array_equal(first, data.order(1, seed=5, micro_batch_size=4))

    def padding(order):
        full = len(order) // 4 * 4
        batches = data.positions[order[:full]].reshape(-1, 4)
        return int((batches.max(1, keepdims=True) - batches).sum())

    random_order = np.random.default_rng(0).permutation(n)
    assert padding(first) < padding(random_order) / 2  # similar lengths share a micro-batch
    batch = {k: torch.stack([data[int(i)][k] for i in first[:4]]) for k in item}
    trimmed = trim_padding(batch)
    longest = int(batch["length"].max())
    assert trimmed["tokens"].shape[1] == -(-longest // 8) * 8 and trimmed["loss_mask"].sum() == batch["loss_mask"].sum()
    # epochs end to end: sample k is fixed by k alone (exact resume from a consumed-sample count)
    epochs = EpochSamples(data, epochs=2, seed=5, micro_batch_size=4)
    assert len(epochs) == 2 * n
    second = data.order(1, seed=5, micro_batch_size=4)
    for k in (0, n - 1, n, 2 * n - 1):
        expected = data[int((first if k < n else second)[k % n])]
        assert torch.equal(epochs[k]["tokens"], expected["tokens"])
    with pytest.raises(ValueError, match="longer than data.seq_length 64"):
        SFTDataset(config.output_prefix, "train", 64)


# ---------------------------------------------------------------------------------------------- counts

def _write_xz(path, lines):
    with lzma.open(path, "wt", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    return str(path)


def test_counts_balance_against_an_independent_recount(tmp_path, shared_data, ntrex, tokenizers):
    par = shared_data / "parallel"
    zh = read_lines(par / "ntrex128.zh.xz", limit=N_LINES)
    bo = read_lines(par / "ntrex128.bo.xz", limit=N_LINES)
    # injected: two exact duplicates, one duplicate up to normalisation, an empty Tibetan side, an over-long pair
    zh += [zh[0], zh[1], zh[2], "空", "长" * 10]
    bo += [bo[0], bo[1], bo[2].replace("་", " ་ ", 1), "", "ཀ་" * 1000]
    exclude = _write_xz(tmp_path / "exclude.bo.xz", [bo[5], bo[6], "unrelated"])
    conversations = [
        [{"role": "user", "content": "བོད་སྐད་དུ་ཞུས།"}, {"role": "assistant", "content": ntrex["bo"][7]}],
        [{"role": "user", "content": "Say it again"}, {"role": "assistant", "content": bo[5]}],  # excluded Tibetan
        [{"role": "user", "content": "a<|im_end|>"}, {"role": "assistant", "content": "ཀ"}],  # special token
    ]
    lines = [json.dumps({"messages": c}, ensure_ascii=False) for c in conversations]
    lines += [lines[0], ""]  # a duplicate and a blank line
    messages = tmp_path / "chat.jsonl"
    messages.write_text("\n".join(lines) + "\n", encoding="utf-8")
    config = SFTDataConfig(output_prefix=str(tmp_path / "out"), tokenizer="smollm2",
                           pairs=(("zh", _write_xz(tmp_path / "zh.xz", zh), _write_xz(tmp_path / "bo.xz", bo)),),
                           messages=(str(messages),), exclude=(exclude,), valid_fraction=0.25, max_length=1024,
                           reverse_share=0.0, progress=False)
    stats = prepare_sft(config, tokenizers["smollm2"][0])

    # independent recount from the raw lines
    pairs = [(normalize(z), normalize(b)) for z, b in zip(zh, bo)]
    empty = sum(1 for z, b in pairs if not z or not b)
    unique = list(dict.fromkeys(p for p in pairs if p[0] and p[1]))
    duplicate = len(pairs) - empty - len(unique)
    excluded = {normalize(bo[5]), normalize(bo[6])}
    leak = sum(1 for _, b in unique if b in excluded)
    assert stats["per_direction"]["zh-bo"]["dropped"]["empty"] == empty == 1
    assert stats["per_direction"]["zh-bo"]["dropped"]["duplicate"] == duplicate == 3
    assert stats["per_direction"]["zh-bo"]["dropped"]["leak_exclude"] == leak == 2
    assert stats["per_direction"]["zh-bo"]["dropped"]["too_long"] == 1
    m = stats["per_direction"]["messages"]
    assert m["in"] == 5 and m["dropped"]["empty"] == 1 and m["dropped"]["duplicate"] == 1
    assert m["dropped"]["leak_exclude"] == 1 and m["dropped"]["special_token"] == 1
    assert stats["leaks"]["exclude"] == 3 and stats["leaks"]["valid"] == 0 and len(stats["leaks"]["first"]) == 3
    for d in stats["per_direction"].values():
        assert d["in"] == d["train"] + d["valid"] + sum(d["dropped"].values())
    assert stats["examples_in"] == sum(stats["examples_out"].values()) + sum(stats["dropped"].values())
    train, valid = _records(config.output_prefix, "train"), _records(config.output_prefix, "valid")
    assert all(r["tokens"] - 1 <= 1024 for r in train + valid)
    assert not any("ཀ་ཀ་ཀ་" in r["text"] for r in train + valid)  # the over-long one is the injected one
    assert len(train) == stats["examples_out"]["train"] and len(valid) == stats["examples_out"]["valid"]
    assert stats["splits"]["train"]["trained_tokens"] == sum(r["trained_tokens"] for r in train)


# ---------------------------------------------------------------------------------------------- errors

def test_bad_inputs_name_file_and_line(tmp_path, shared_data, tokenizers, capsys):
    par = shared_data / "parallel"
    zh = _write_xz(tmp_path / "zh.xz", read_lines(par / "ntrex128.zh.xz", limit=10))
    bo = _write_xz(tmp_path / "bo.xz", read_lines(par / "ntrex128.bo.xz", limit=9))

    def run(**kw):
        config = SFTDataConfig(output_prefix=str(tmp_path / "out"), tokenizer="smollm2", progress=False, **kw)
        return prepare_sft(config, tokenizers["smollm2"][0])

    with pytest.raises(InputError, match=r"not line-aligned: .*zh.xz has 10 lines, .*bo.xz has 9"):
        run(pairs=(("zh", zh, bo),))
    good = json.dumps({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "ཀ"}]})
    cases = {
        json.dumps({"messages": [{"role": "user", "content": "a"}]}): "no assistant turn",
        json.dumps({"messages": [{"role": "human", "content": "a"}, {"role": "assistant", "content": "b"}]}):
            "unknown role 'human'",
        json.dumps({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                                 {"role": "user", "content": "c"}]}): "must end with the assistant",
        json.dumps({"messages": [{"role": "user", "content": "a", "name": "x"}, {"role": "assistant", "content": "b"}]}):
            "has key\\(s\\) name",
        json.dumps({"messages": [{"role": "user", "content": 3}]}): "string 'role' and 'content'",
        json.dumps({"text": "a"}): "'messages' list",
        '{"messages": [': "malformed JSON",
    }
    for bad, message in cases.items():
        path = tmp_path / "chat.jsonl"
        path.write_text(f"{good}\n\n{bad}\n", encoding="utf-8")
        with pytest.raises(InputError, match=f"chat.jsonl:3: .*{message}"):
            run(messages=(str(path),))
    # a template that cannot render names the line of the conversation
    template = tmp_path / "template.jinja"
    template.write_text("{% if messages | length > 2 %}{{ raise_exception('two turns at most') }}{% endif %}"
                        + tokenizers["smollm2"][0].chat_template, encoding="utf-8")
    path = tmp_path / "chat.jsonl"
    long = json.dumps({"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "a"},
                                    {"role": "assistant", "content": "ཀ"}]})
    path.write_text(f"{good}\n{long}\n", encoding="utf-8")
    with pytest.raises(InputError, match="chat.jsonl:2: the chat template cannot render 3 message.*two turns at most"):
        run(messages=(str(path),), chat_template=str(template))
    assert not list(tmp_path.glob("out_*"))  # nothing written by any failed run
    # the tool: one line on stderr, exit 1, no traceback
    spec = importlib.util.spec_from_file_location("prepare_sft_tool", ROOT / "tools" / "prepare_sft.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    capsys.readouterr()
    assert tool.main(["--pairs", f"zh={zh},{bo}", "--tokenizer", "smollm2", "--output", str(tmp_path / "out"),
                      "--no-progress"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("prepare_sft: error: parallel files are not line-aligned")


# ---------------------------------------------------------------------------------------------- the tool

def test_tool_end_to_end_on_ntrex(tmp_path, shared_data, tokenizers):
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    par, flores = shared_data / "parallel", shared_data / "eval" / "flores200.dev.bo"
    files = {lang: _write_xz(tmp_path / f"ntrex.{lang}.xz", read_lines(par / f"ntrex128.{lang}.xz", limit=120))
             for lang in ("zh", "en", "bo")}
    held = tmp_path / "held.bo"  # three NTREX lines treated as evaluation references
    held.write_text("\n".join(read_lines(files["bo"])[10:13]) + "\n", encoding="utf-8")
    prefix = tmp_path / "sft" / "ntrex"
    result = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "prepare_sft.py"), "--pairs", f"zh={files['zh']},{files['bo']}",
         "--pairs", f"en={files['en']},{files['bo']}", "--tokenizer", "qwen2.5", "--output", str(prefix),
         "--valid-fraction", "0.1", "--exclude", str(flores), str(held), "--max-length", "256", "--seq-length", "512",
         "--reverse-share", "0.2", "--seed", "11", "--no-progress"],
        capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "packing efficiency" in result.stdout
    stats = json.loads(Path(f"{prefix}_stats.json").read_text())
    assert stats["tokenizer"] == "qwen2.5" and stats["vocab_size"] == 151665 and stats["eod_id"] == 151643
    assert stats["dtype"] == "int32" and stats["seq_length"] == 512 and stats["template"] == "model"
    assert stats["examples_in"] == 240 + stats["per_direction"]["bo-zh"]["in"] + stats["per_direction"]["bo-en"]["in"]
    assert stats["leaks"]["exclude"] == sum(d["dropped"]["leak_exclude"] for d in stats["per_direction"].values()) >= 6
    assert stats["examples_in"] == sum(stats["examples_out"].values()) + sum(stats["dropped"].values())

    tok = tokenizers["qwen2.5"][0]
    banned = {normalize(t) for t in read_lines(flores)} | {normalize(t) for t in read_lines(held)}
    tibetan = {}
    for split in ("valid", "train"):
        records = _records(prefix, split)
        tokens = IndexedDataset(split_prefix(str(prefix), split, "tokens"))
        masks = IndexedDataset(split_prefix(str(prefix), split, "loss_mask"))
        assert len(tokens) == len(masks) == len(records) == stats["examples_out"][split]
        tibetan[split] = set()
        for k, r in enumerate(records):
            ids, mask = np.array(tokens[k]), np.array(masks[k]).astype(bool)
            full = tok(r["text"], add_special_tokens=False)["input_ids"]
            assert ids.tolist() == full[: len(ids)] and full[len(ids):] == tok("\n")["input_ids"]
            check_answer_only(tok, None, r["messages"], ids, mask, [1])
            source, target = r["direction"].split("-")
            if target == "bo":
                tibetan[split].add(r["messages"][1]["content"])
            else:  # the Tibetan source inside the drawn phrasing
                before, after = phrasings(source, target)[r["phrasing"]].split("{text}")
                prompt = r["messages"][0]["content"]
                assert prompt.startswith(before) and prompt.endswith(after)
                tibetan[split].add(prompt[len(before) : len(prompt) - len(after)])
    assert not tibetan["train"] & banned and not tibetan["valid"] & banned
    assert not tibetan["train"] & tibetan["valid"]  # nothing held out is trained on, in any direction
    assert stats["per_direction"]["bo-zh"]["train"] + stats["per_direction"]["bo-en"]["train"] > 0
    for split in ("train", "valid"):
        data = SFTDataset(str(prefix), split, 512)
        assert data.efficiency == pytest.approx(stats["splits"][split]["packing_efficiency"], abs=1e-4)
