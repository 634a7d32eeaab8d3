"""The choice of preprocessing encoder: :func:`encoder_for` picks, once at start-up, the fastest encoder
whose ids equal the tokenizer's own on a sample (built-in edge cases plus the caller's first documents)
and says why; workers rebuild the chosen one by name."""

from __future__ import annotations

import json

from megatron_tibetan.tokenizer.encoders import GigatokenEncoder, PieceCachedEncoder, PlainEncoder
from megatron_tibetan.tokenizer.encoded import fast_ids
from megatron_tibetan.tokenizer.split_pattern import split_pattern

# start-up sample: the scripts and edge cases preprocessing meets (the caller adds real documents)
SAMPLE_TEXTS = (
    "", " ", "  ", "it's  a   test\n\n x", "ཀ\n\nཁ ", "<|im_end|> ཀ་ཁ།", "<|endoftext|>", "emoji 😀 ཀ་",
    "\x1cཀ\x1f\x85ཁ", "ཀ ༡༢༣ 123 ١٢٣", "\u0f43\u0f73 \u0f42\u0fb7", "ཀ\u0f74\u0f7c", "I'LL don't", "\u3000全角　ཀ",
    "༄༅། །རྒྱ་གར་སྐད་དུ། བོད་སྐད་དུ། སངས་རྒྱས་དང་བྱང་ཆུབ་སེམས་དཔའ་ཐམས་ཅད་ལ་ཕྱག་འཚལ་ལོ། །",
    "འདི་སྐད་བདག་གིས་ཐོས་པ་དུས་གཅིག་ན། བཅོམ་ལྡན་འདས་རྒྱལ་པོའི་ཁབ་ན་བྱ་རྒོད་ཀྱི་ཕུང་པོའི་རི་ལ།",
    "The Blessed One was staying at Rājagṛha, on Vulture Peak, with 1,250 monks.",
    "世尊在王舍城耆闍崛山中，與大比丘眾千二百五十人俱。",
)



def _special_affixes(tokenizer) -> tuple[list[int], list[int]] | None:
    """The ids the post-processor puts before and after a single sequence (e.g. [BOS], []), or None
    if it does more than add tokens around it."""
    bare = tokenizer.encode("ཀ ཁ", add_special_tokens=False).ids
    full = tokenizer.encode("ཀ ཁ", add_special_tokens=True).ids
    for start in range(len(full) - len(bare) + 1):
        if full[start : start + len(bare)] == bare:
            return full[:start], full[start + len(bare) :]
    return None


ENCODERS = ("gigatoken", "piece-cache", "encode_batch")


def build_encoder(tokenizer, name: str, reason: str = ""):
    """The encoder ``name`` (one of :data:`ENCODERS`) for ``tokenizer`` (a ``tokenizers.Tokenizer``),
    without the start-up check; :func:`select_encoder` chooses the name."""
    if name == "encode_batch":
        return PlainEncoder(tokenizer, reason)
    affixes = _special_affixes(tokenizer)
    if affixes is None:
        raise ValueError("the post-processor does more than add special tokens around the text")
    if name == "gigatoken":
        return GigatokenEncoder(tokenizer, affixes, reason)
    if name == "piece-cache":
        config = json.loads(tokenizer.to_str())
        pattern = split_pattern(config)
        if pattern is None:
            raise ValueError("normaliser, split or BPE options the piece cache does not reproduce")
        nfc = (config.get("normalizer") or {}).get("type") == "NFC"
        return PieceCachedEncoder(tokenizer, pattern, nfc, affixes, reason)
    raise ValueError(f"encoder {name!r}, expected one of {', '.join(ENCODERS)}")


def _mismatch(encoder, tokenizer, texts: list[str]) -> str | None:
    """None if ``encoder`` gives the tokenizer's own ids on every text, else which text differs."""
    ours = encoder.encode_batch(texts)
    reference = fast_ids(tokenizer, texts, True)
    wrong = [i for i, (a, b) in enumerate(zip(ours, reference)) if a != b]
    if not wrong:
        return None
    return f"ids differ from the tokenizer's on {len(wrong)} of {len(texts)} sample texts (first: {texts[wrong[0]][:40]!r})"


def select_encoder(tokenizer, sample: list[str] = ()):
    """The fastest encoder whose ids equal the tokenizer's on :data:`SAMPLE_TEXTS` and ``sample`` (the
    caller's first documents); its ``reason`` says why it was chosen and why faster ones were not."""
    texts = list(SAMPLE_TEXTS) + list(sample)
    refused = []
    for name in ENCODERS[:-1]:
        try:
            encoder = build_encoder(tokenizer, name)
        except ImportError:
            refused.append(f"{name}: not installed (pip install megatron_tibetan[fast])")
            continue
        except Exception as error:  # a refusal is reported, not raised: the next encoder takes over
            refused.append(f"{name}: {str(error).strip().splitlines()[0]}")
            continue
        try:
            problem = _mismatch(encoder, tokenizer, texts)
        except Exception as error:
            problem = f"failed on the sample: {str(error).strip().splitlines()[0]}"
        if problem:
            refused.append(f"{name}: {problem}")
            continue
        encoder.reason = "; ".join(refused + [f"{name}: ids equal the tokenizer's on {len(texts)} sample texts"])
        return encoder
    return PlainEncoder(tokenizer, "; ".join(refused + ["encode_batch: the tokenizer itself"]))


def encoder_for(tokenizer, name: str | None = None, sample: list[str] = ()):
    """The preprocessing encoder of ``tokenizer`` (a ``tokenizers.Tokenizer``): the one named (a
    worker rebuilding the main process's choice, no check), else :func:`select_encoder`'s on ``sample``."""
    return select_encoder(tokenizer, sample) if name is None else build_encoder(tokenizer, name)
