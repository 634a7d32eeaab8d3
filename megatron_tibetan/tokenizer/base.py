"""Load a base tokenizer from a spec: a preset name, an HF directory, a tokenizer.json, or a .gguf file."""

from __future__ import annotations

from pathlib import Path

from megatron_tibetan import presets


def resolve_tokenizer_dir(spec: str | Path) -> tuple[Path, str | None]:
    """(directory, gguf file name or None) for a tokenizer spec."""
    spec = str(spec)
    if spec == "smollm2":
        return presets.smollm2_hf_dir(), None
    if spec in ("qwen2.5", "qwen2"):
        return presets.qwen25_tokenizer_dir(), None
    path = Path(spec)
    if path.is_dir():
        return path, None
    if path.is_file() and path.suffix == ".gguf":
        return path.parent, path.name
    if path.is_file() and path.name.endswith(".json"):
        return path, None
    raise FileNotFoundError(
        f"tokenizer '{spec}': not a preset ({', '.join(presets.PRESETS)}), an HF tokenizer directory, "
        "a tokenizer.json or a .gguf file"
    )


def load_tokenizer(spec: str | Path):
    """A ``transformers.PreTrainedTokenizerFast`` for ``spec`` (see :func:`resolve_tokenizer_dir`)."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    where, gguf = resolve_tokenizer_dir(spec)
    if where.is_file():  # a bare tokenizer.json
        return PreTrainedTokenizerFast(tokenizer_file=str(where), clean_up_tokenization_spaces=False)
    if gguf:
        return AutoTokenizer.from_pretrained(str(where), gguf_file=gguf)
    return AutoTokenizer.from_pretrained(str(where))
