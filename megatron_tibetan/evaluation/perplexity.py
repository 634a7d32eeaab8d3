"""Perplexity and bits per byte of a causal LM on normalised text.

Each document is tokenised as ``[start] + tokens(normalize(text))`` where ``start`` is the token the tokenizer
itself puts first (a BOS), else its end-of-sequence token (the document boundary a model sees in packed
pretraining). Every text token is predicted exactly once, so

    perplexity    = exp(sum NLL / number of text tokens)          (token-weighted, no per-document mean)
    bits per byte = sum NLL / ln 2 / UTF-8 bytes of the normalised text

and bits per byte compares models whose vocabularies differ. A document longer than the context is scored
with a sliding window: windows of ``max_length`` tokens start every ``stride`` tokens, and each token is
scored in the first window that contains it, so it keeps at least ``max_length - stride`` tokens of context.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Iterable

import torch
from tqdm import tqdm

from megatron_tibetan.text import normalize


@dataclass
class PerplexityResult:
    nll: float  # total negative log-likelihood in nats
    tokens: int  # predicted (text) tokens
    bytes: int  # UTF-8 bytes of the normalised text
    documents: int
    skipped_empty: int  # documents empty after normalisation (counted, not scored)
    start_token: str = ""  # the token each document is conditioned on
    max_length: int = 0  # window and stride used
    stride: int = 0

    @property
    def perplexity(self) -> float:
        return math.exp(self.nll / self.tokens)

    @property
    def bits_per_byte(self) -> float:
        return self.nll / math.log(2) / self.bytes

    @property
    def nll_per_token(self) -> float:
        return self.nll / self.tokens

    def as_dict(self) -> dict:
        d = asdict(self)
        d.update(perplexity=self.perplexity, bits_per_byte=self.bits_per_byte, nll_per_token=self.nll_per_token)
        return d


def document_start_id(tokenizer) -> int:
    """The token that opens every document: the tokenizer's own leading special token, else EOS."""
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    special = tokenizer("a", add_special_tokens=True)["input_ids"]
    if len(special) > len(plain) and special[1:] == plain:
        return special[0]
    if tokenizer.eos_token_id is None:
        raise ValueError(f"tokenizer {tokenizer.name_or_path!r} adds no BOS and has no EOS token: no document start")
    return tokenizer.eos_token_id


def windows(n: int, max_length: int, stride: int) -> list[tuple[int, int, int]]:
    """(begin, end, first_target) for a sequence of ``n`` tokens whose position 0 is never a target.

    Window k covers tokens [k*stride, min(k*stride + max_length, n)); it scores targets from the end of the
    previous window to its own end. ``stride < max_length`` so each target's predecessor is in its window.
    """
    if not 1 <= stride < max_length:
        raise ValueError(f"stride must be in [1, max_length): stride={stride}, max_length={max_length}")
    spans, begin, scored_to = [], 0, 1
    while scored_to < n:
        end = min(begin + max_length, n)
        spans.append((begin, end, scored_to))
        scored_to, begin = end, begin + stride
    return spans


def _batches(items: list, batch_tokens: int):
    """Windows sorted longest first, packed so that (longest in batch) x (count) <= batch_tokens."""
    items = sorted(items, key=lambda w: -len(w[0]))
    batch: list = []
    for item in items:
        if batch and len(batch[0][0]) * (len(batch) + 1) > batch_tokens:
            yield batch
            batch = []
        batch.append(item)
    if batch:
        yield batch


@torch.inference_mode()
def _window_nll(model, batch, pad_id: int, chunk: int = 1024) -> float:
    """Summed NLL of the targets of a batch of windows (ids, offset of the first target within the window)."""
    length = len(batch[0][0])
    ids = torch.full((len(batch), length), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    targets = torch.zeros_like(ids, dtype=torch.bool)  # position j is a target, predicted from j-1
    for row, (window, first) in enumerate(batch):
        ids[row, : len(window)] = torch.tensor(window)
        mask[row, : len(window)] = 1
        targets[row, first : len(window)] = True
    ids, mask, targets = ids.to(model.device), mask.to(model.device), targets.to(model.device)
    hidden = model.get_decoder()(input_ids=ids, attention_mask=mask).last_hidden_state
    # the hidden state at j-1 predicts token j; project only the positions we score (keeps logits small)
    h = hidden[:, :-1][targets[:, 1:]]
    labels = ids[:, 1:][targets[:, 1:]]
    head = model.get_output_embeddings()
    total = 0.0
    for i in range(0, len(labels), chunk):
        logits = head(h[i : i + chunk]).float()
        total += torch.nn.functional.cross_entropy(logits, labels[i : i + chunk], reduction="sum").double().item()
    return total


def perplexity(
    model,
    tokenizer,
    texts: Iterable[str],
    max_length: int | None = None,
    stride: int | None = None,
    batch_tokens: int = 8192,
    progress: bool = True,
) -> PerplexityResult:
    """Score ``texts`` (each one document, normalised here) with an HF causal LM; see the module docstring."""
    if getattr(model.config, "final_logit_softcapping", None):
        raise NotImplementedError("models with final logit soft-capping are not supported")
    max_length = max_length or min(getattr(model.config, "max_position_embeddings", 2048), 2048)
    stride = stride or max_length // 2
    start = document_start_id(tokenizer)
    items, n_bytes, n_tokens, docs, empty = [], 0, 0, 0, 0
    for text in texts:
        text = normalize(text)
        if not text:
            empty += 1
            continue
        ids = [start] + tokenizer(text, add_special_tokens=False)["input_ids"]
        for begin, end, first in windows(len(ids), max_length, stride):
            items.append((ids[begin:end], first - begin))
        docs += 1
        n_bytes += len(text.encode("utf-8"))
        n_tokens += len(ids) - 1
    if not docs:
        raise ValueError("no non-empty document to score")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else start
    model.eval()
    nll = 0.0
    total_tokens = sum(len(w) for w, _ in items)
    with tqdm(total=total_tokens, unit="tok", desc="perplexity", disable=not progress) as bar:
        for batch in _batches(items, batch_tokens):
            nll += _window_nll(model, batch, pad_id)
            bar.update(sum(len(w) for w, _ in batch))
    return PerplexityResult(nll=nll, tokens=n_tokens, bytes=n_bytes, documents=docs, skipped_empty=empty,
                            start_token=tokenizer.convert_ids_to_tokens(start), max_length=max_length, stride=stride)
