"""Batched translation into Tibetan with a chat template: greedy or beam search, stop on end of turn, and
optionally at a length set by the source line (characters of output per character of source).

The prompt is built as SFT data builds a trained one: the conversation of
:func:`megatron_tibetan.data.prompts.translation_messages` in the chosen phrasing, rendered with the
generation prompt and tokenised by :class:`megatron_tibetan.data.chat.ChatEncoder` (the same template
choice as ``tools/prepare_sft.py``: ``auto``, ``model``, ``plain`` or a Jinja template).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from tqdm import tqdm
from transformers import StoppingCriteria, StoppingCriteriaList

from megatron_tibetan.data.chat import END_OF_TURN, ChatEncoder  # end-of-turn tokens in the vocabulary stop generation
from megatron_tibetan.data.prompts import translation_messages
from megatron_tibetan.text import normalize


class _CharacterCap(StoppingCriteria):
    """A ``transformers`` stopping criterion: row r is done once its new tokens decode to at least ``caps[r]``
    characters. Greedy output is a prefix of longer greedy output, so stopping there and cutting at the cap
    gives what generating further and cutting would."""

    def __init__(self, tokenizer, prompt_width: int, caps: list[int]):
        self.tokenizer, self.width, self.caps = tokenizer, prompt_width, caps

    def __call__(self, input_ids, scores, **kwargs):
        texts = self.tokenizer.batch_decode(input_ids[:, self.width :], skip_special_tokens=True)
        return torch.tensor([len(t) >= cap for t, cap in zip(texts, self.caps)], device=input_ids.device)


def character_caps(sources: Sequence[str], ratio: float | None) -> list[int] | None:
    """The most characters of output each source line allows: ``ratio`` times its normalised length
    (at least 1); None without a ratio."""
    if ratio is None:
        return None
    if ratio <= 0:
        raise ValueError(f"the length ratio must be positive, got {ratio}")
    return [max(1, math.ceil(ratio * len(normalize(text)))) for text in sources]


def stop_ids(tokenizer) -> list[int]:
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    vocab = tokenizer.get_vocab()
    ids.update(vocab[t] for t in END_OF_TURN if t in vocab)
    if not ids:
        raise ValueError(f"tokenizer {tokenizer.name_or_path!r} has no EOS or end-of-turn token to stop on")
    return sorted(ids)


def chat_inputs(encoder: ChatEncoder, sources: Sequence[str], source_lang: str, phrasing: int = 0) -> list[list[int]]:
    """The prompt tokens of each source line (normalised as SFT pairs are) in ``phrasing``."""
    return [encoder.prompt_ids(translation_messages(normalize(text), source_lang, "bo", phrasing)) for text in sources]


@torch.inference_mode()
def translate(
    model,
    encoder: ChatEncoder,
    sources: Sequence[str],
    source_lang: str,
    num_beams: int = 1,
    batch_size: int = 8,
    max_new_tokens: int = 256,
    progress: bool = True,
    phrasing: int = 0,
    max_length_ratio: float | None = None,
) -> list[str]:
    """One line of output per source line (newlines inside an output become spaces), in input order.
    ``max_length_ratio``: each output is cut at that many characters per character of its (normalised)
    source; ``max_new_tokens`` still bounds every line."""
    tokenizer = encoder.tokenizer
    prompts = chat_inputs(encoder, sources, source_lang, phrasing)
    caps = character_caps(sources, max_length_ratio)
    stops = stop_ids(tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stops[0]
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))  # similar lengths share a batch
    outputs: list[str] = [""] * len(prompts)
    model.eval()
    desc = f"{source_lang}→bo beam={num_beams}" + (f" phrasing {phrasing}" if phrasing else "")
    for start in tqdm(range(0, len(order), batch_size), desc=desc, disable=not progress):
        rows = order[start : start + batch_size]
        width = max(len(prompts[i]) for i in rows)
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for r, i in enumerate(rows):  # left padding: every prompt ends where generation begins
            ids[r, width - len(prompts[i]) :] = torch.tensor(prompts[i])
            mask[r, width - len(prompts[i]) :] = 1
        # beam search ranks whole beams, so there the cap only cuts the chosen output
        stopping = StoppingCriteriaList([_CharacterCap(tokenizer, width, [caps[i] for i in rows])]) if caps and num_beams == 1 else None
        generated = model.generate(
            input_ids=ids.to(model.device), attention_mask=mask.to(model.device), max_new_tokens=max_new_tokens, num_beams=num_beams,
            do_sample=False, eos_token_id=stops, pad_token_id=pad, early_stopping=num_beams > 1,
            temperature=None, top_p=None, top_k=None, stopping_criteria=stopping,
        )
        for r, i in enumerate(rows):
            new = generated[r, width:].cpu().tolist()
            cut = next((k for k, t in enumerate(new) if t in stops), len(new))
            text = tokenizer.decode(new[:cut], skip_special_tokens=True)
            outputs[i] = " ".join((text[: caps[i]] if caps else text).split())
    return outputs
