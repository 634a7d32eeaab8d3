"""Batched translation into Tibetan with a model's chat template: greedy or beam search, stop on end of turn."""

from __future__ import annotations

from typing import Sequence

import torch
from tqdm import tqdm

from megatron_tibetan.data.chat import END_OF_TURN  # those in the vocabulary stop generation
from megatron_tibetan.data.prompts import translation_prompt
from megatron_tibetan.text import normalize



def prompt(text: str, source: str, target: str = "bo") -> str:
    """The first phrasing of the direction: the one SFT data also trains with (data.prompts)."""
    return translation_prompt(text, source, target)


def stop_ids(tokenizer) -> list[int]:
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    vocab = tokenizer.get_vocab()
    ids.update(vocab[t] for t in END_OF_TURN if t in vocab)
    if not ids:
        raise ValueError(f"tokenizer {tokenizer.name_or_path!r} has no EOS or end-of-turn token to stop on")
    return sorted(ids)


def chat_inputs(tokenizer, sources: Sequence[str], source_lang: str) -> list[list[int]]:
    if not tokenizer.chat_template:
        raise ValueError(f"tokenizer {tokenizer.name_or_path!r} has no chat template")
    out = []
    for text in sources:
        messages = [{"role": "user", "content": prompt(normalize(text), source_lang)}]
        rendered = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        out.append(tokenizer(rendered, add_special_tokens=False)["input_ids"])
    return out


@torch.inference_mode()
def translate(
    model,
    tokenizer,
    sources: Sequence[str],
    source_lang: str,
    num_beams: int = 1,
    batch_size: int = 8,
    max_new_tokens: int = 256,
    progress: bool = True,
) -> list[str]:
    """One line of output per source line (newlines inside an output become spaces), in input order."""
    prompts = chat_inputs(tokenizer, sources, source_lang)
    stops = stop_ids(tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stops[0]
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))  # similar lengths share a batch
    outputs: list[str] = [""] * len(prompts)
    model.eval()
    for start in tqdm(range(0, len(order), batch_size), desc=f"{source_lang}→bo beam={num_beams}", disable=not progress):
        rows = order[start : start + batch_size]
        width = max(len(prompts[i]) for i in rows)
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for r, i in enumerate(rows):  # left padding: every prompt ends where generation begins
            ids[r, width - len(prompts[i]) :] = torch.tensor(prompts[i])
            mask[r, width - len(prompts[i]) :] = 1
        generated = model.generate(
            input_ids=ids.to(model.device), attention_mask=mask.to(model.device), max_new_tokens=max_new_tokens, num_beams=num_beams,
            do_sample=False, eos_token_id=stops, pad_token_id=pad, early_stopping=num_beams > 1,
            temperature=None, top_p=None, top_k=None,
        )
        for r, i in enumerate(rows):
            new = generated[r, width:].cpu().tolist()
            cut = next((k for k, t in enumerate(new) if t in stops), len(new))
            text = tokenizer.decode(new[:cut], skip_special_tokens=True)
            outputs[i] = " ".join(text.split())
    return outputs
