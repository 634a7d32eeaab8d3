"""Load a base tokenizer from a spec: a preset name, an HF directory, a tokenizer.json, a .gguf file, or a
SentencePiece model file (``tokenizer.model``); say which kind of base it is."""

from __future__ import annotations

import json
from pathlib import Path

from megatron_tibetan import presets
from megatron_tibetan.tokenizer.sentencepiece_model import (
    SENTENCEPIECE_FILE, hf_tokenizer, is_sentencepiece_model, read_model_proto,
)

BYTE_LEVEL_BPE, SENTENCEPIECE = "byte_level_bpe", "sentencepiece"


def resolve_tokenizer_dir(spec: str | Path) -> tuple[Path, str | None]:
    """(directory, gguf file name or None) for a tokenizer spec."""
    spec = str(spec)
    if spec == "smollm2":
        return presets.smollm2_hf_dir(), None
    if spec in ("qwen2.5", "qwen2"):
        return presets.qwen25_tokenizer_dir(), None
    if spec in ("qwen3.6", "qwen3.5"):
        return presets.qwen36_tokenizer_dir(), None
    path = Path(spec)
    if path.is_dir():
        return path, None
    if path.is_file() and path.suffix == ".gguf":
        return path.parent, path.name
    if path.is_file() and (path.name.endswith(".json") or path.suffix == ".model"):
        return path, None
    raise FileNotFoundError(
        f"tokenizer '{spec}': not a preset ({', '.join(presets.PRESETS)}), an HF tokenizer directory, "
        "a tokenizer.json, a .gguf file or a SentencePiece .model file"
    )


def load_tokenizer(spec: str | Path):
    """A ``transformers.PreTrainedTokenizerFast`` for ``spec`` (see :func:`resolve_tokenizer_dir`)."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    where, gguf = resolve_tokenizer_dir(spec)
    if where.is_file() and where.suffix == ".model":  # a bare SentencePiece model
        return hf_tokenizer(read_model_proto(where))
    try:
        if where.is_file():  # a bare tokenizer.json
            return PreTrainedTokenizerFast(tokenizer_file=str(where), clean_up_tokenization_spaces=False)
        if gguf:
            return AutoTokenizer.from_pretrained(str(where), gguf_file=gguf)
        return AutoTokenizer.from_pretrained(str(where))
    except Exception:
        _name_damaged_file(where)
        raise


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json")


def _name_damaged_file(where: Path) -> None:
    """After a failed load: a ValueError naming the tokenizer file that is not whole JSON, if one is not."""
    import json

    for path in [where] if where.is_file() else [where / name for name in TOKENIZER_FILES]:
        if path.is_file():
            try:
                json.loads(path.read_text(encoding="utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError) as error:
                raise ValueError(f"{path}: not a readable tokenizer file ({error}); it is truncated or damaged: "
                                 f"copy it again") from None


def sentencepiece_model_file(spec: str | Path) -> Path | None:
    """The SentencePiece model of ``spec`` (a .model file, or an HF directory's tokenizer.model), else None."""
    where, gguf = resolve_tokenizer_dir(spec)
    candidate = where / SENTENCEPIECE_FILE if where.is_dir() and not gguf else where
    return candidate if candidate.is_file() and candidate.suffix == ".model" and is_sentencepiece_model(candidate) else None


def base_kind(spec: str | Path, tokenizer=None) -> str:
    """``SENTENCEPIECE`` (a SentencePiece model file to merge pieces into) or ``BYTE_LEVEL_BPE``; ValueError
    for any other tokenizer. ``tokenizer``: the already loaded ``load_tokenizer(spec)``, if any."""
    if sentencepiece_model_file(spec) is not None:
        return SENTENCEPIECE
    where, _ = resolve_tokenizer_dir(spec)
    if where.is_file() and where.suffix == ".model":
        raise ValueError(f"tokenizer '{spec}': not a SentencePiece model file")
    backend = json.loads((tokenizer or load_tokenizer(spec)).backend_tokenizer.to_str())
    if backend["model"]["type"] == "BPE" and "ByteLevel" in json.dumps(backend["pre_tokenizer"]):
        return BYTE_LEVEL_BPE
    sentencepiece_like = backend["model"].get("byte_fallback") or "Metaspace" in json.dumps(backend)
    raise ValueError(
        f"tokenizer '{spec}': a {backend['model']['type']} model that is neither byte-level BPE nor a SentencePiece "
        "model; Tibetan tokens can be added to a byte-level BPE tokenizer or to a SentencePiece model "
        f"({SENTENCEPIECE_FILE})"
        + (f" — this one looks SentencePiece-derived: pass the directory that holds its {SENTENCEPIECE_FILE}"
           if sentencepiece_like else "")
    )
