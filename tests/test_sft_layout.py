"""The model trains on what the user wrote: chat turns keep their layout through tools/prepare_sft.py, the
stats count what a Tibetan rule changed, and the prompt tools/evaluate.py asks is, token for token, the
prompt SFT data trained (the model's template, the plain template and a user's --chat-template)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from megatron_tibetan.data.chat import ChatEncoder
from megatron_tibetan.data.prompts import phrasings, translation_messages
from megatron_tibetan.data.sft_dataset import split_prefix
from megatron_tibetan.evaluation.translate import chat_inputs
from megatron_tibetan.text import normalize
from megatron_tibetan.text.readers import read_lines

ROOT = Path(__file__).resolve().parents[1]

CODE = "Here is the function:\n\n```python\ndef f(x):\n    return  x*2\n```\n"
LIST = "Steps:\n\n1. read\n2. write\n\n- a\n    - nested\n"
PARAGRAPHS = "para one.\n\npara two"
TIBETAN = "བོད་ཡིག་ནི་\n\n    ལེགས་པོ་རེད།\nཡི་གེ  གཉིས།"  # blank line, indentation, two spaces between syllable runs
CHANGED = "ཀ་་ཁ\u0f77"  # a tsheg run and a deprecated vowel sign: the Tibetan rules change it


def _prepare(tmp_path, name, conversations, *flags, tokenizer="smollm2"):
    path = tmp_path / f"{name}.jsonl"
    path.write_text("".join(json.dumps({"messages": m}, ensure_ascii=False) + "\n" for m in conversations), encoding="utf-8")
    prefix = tmp_path / name
    done = subprocess.run([sys.executable, "tools/prepare_sft.py", "--messages", str(path), "--tokenizer", tokenizer,
                           "--output", str(prefix), "--max-length", "512", "--no-progress", *flags],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return prefix, json.loads(Path(f"{prefix}_stats.json").read_text())


def _stored(prefix):
    """(token ids, loss mask) of every stored training example, read with megatron-core's reader."""
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    tokens = IndexedDataset(split_prefix(str(prefix), "train", "tokens"))
    masks = IndexedDataset(split_prefix(str(prefix), "train", "loss_mask"))
    return [(np.array(tokens[k]), np.array(masks[k]).astype(bool)) for k in range(len(tokens))]


def test_chat_turns_are_trained_as_written(tmp_path, tiny_llama_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_llama_dir)
    conversations = [
        [{"role": "user", "content": "Write f.\n  Keep   the spaces."}, {"role": "assistant", "content": CODE}],
        [{"role": "system", "content": PARAGRAPHS}, {"role": "user", "content": "List?"}, {"role": "assistant", "content": LIST}],
        [{"role": "user", "content": TIBETAN}, {"role": "assistant", "content": TIBETAN + "\n\n" + CHANGED}],
    ]
    prefix, stats = _prepare(tmp_path, "layout", conversations, "--valid-fraction", "0")
    stored = _stored(prefix)
    records = [json.loads(line) for line in Path(f"{prefix}_train.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(stored) == len(records) == 3
    for (ids, mask), record in zip(stored, records):
        text = tok.decode(ids)
        original = next(c for c in conversations if c[0]["content"] == record["messages"][0]["content"])
        for message in original[:-1]:
            assert message["content"] in text  # prompts: exactly as written
        answer = original[-1]["content"]
        trained = tok.decode(ids[mask])
        expected = answer.replace(CHANGED, normalize(CHANGED)) if CHANGED in answer else answer
        assert trained.startswith(expected) and trained[len(expected):] in ("<|im_end|>",)
    assert normalize(CHANGED) != CHANGED and "\n\n    ལེགས" in normalize(TIBETAN, keep_layout=True)
    assert stats["normalized_messages"] == 1 and stats["normalized"] == {"messages": 1}

    # the earlier behaviour on request: one newline between lines, single spaces
    prefix, stats = _prepare(tmp_path, "collapsed", conversations[:1], "--no-keep-layout")
    ids, mask = _stored(prefix)[0]
    assert tok.decode(ids[mask]) == normalize(CODE, keep_newlines=True) + "<|im_end|>"
    assert "def f(x):\nreturn x*2" in tok.decode(ids[mask]) and stats["normalized_messages"] == 2


PLAIN = "plain"
CUSTOM = ("{%- for m in messages -%}{{ '<|im_start|>' + m['role'] + ' says:\\n' + m['content'] + '<|im_end|>\\n' }}"
          "{%- endfor -%}{%- if add_generation_prompt -%}{{ '<|im_start|>assistant says:\\n' }}{%- endif -%}")


@pytest.mark.parametrize("template", ["model", PLAIN, "custom"])
def test_evaluation_prompt_equals_the_trained_prompt_token_for_token(tmp_path, shared_data, template):
    from megatron_tibetan.tokenizer.base import load_tokenizer

    sources = read_lines(shared_data / "eval" / "flores200.dev.zh", 6)
    refs = read_lines(shared_data / "eval" / "flores200.dev.bo", 6)
    indices = [0, 3, 6, 7, 10, 13]  # English and Chinese phrasings, the text first, last and inside
    conversations = [translation_messages(normalize(s), "zh", "bo", k, answer=normalize(r))
                     for s, r, k in zip(sources, refs, indices)]
    flags, chat_template = [], None
    if template == "custom":
        (tmp_path / "template.jinja").write_text(CUSTOM, encoding="utf-8")
        flags, chat_template = ["--chat-template", str(tmp_path / "template.jinja")], CUSTOM
    else:
        flags = ["--template", template]
    prefix, stats = _prepare(tmp_path, "prompts", conversations, *flags)
    assert stats["normalized_messages"] == 0  # the evaluation prompt survives normalisation as written
    tok = load_tokenizer("smollm2")
    encoder = ChatEncoder(tok, "auto" if chat_template else template, chat_template=chat_template)
    records = [json.loads(line) for line in Path(f"{prefix}_train.jsonl").read_text(encoding="utf-8").splitlines()]
    for (ids, mask), record in zip(_stored(prefix), records):
        k = next(i for i, c in enumerate(conversations) if c[1]["content"] == record["messages"][1]["content"])
        trained_prompt = ids[: int(np.flatnonzero(mask)[0])].tolist()
        assert trained_prompt == chat_inputs(encoder, [sources[k]], "zh", indices[k])[0]
        assert phrasings("zh", "bo")[indices[k]].split("{text}")[0] in tok.decode(trained_prompt)
