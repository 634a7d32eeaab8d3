"""What every Tibetan-extended tokenizer directory shares, whatever its base: ``extension.json`` (how
it was made: base, new ids, corpus and settings), the base named portably, and per-file line limits."""

from __future__ import annotations

import json
from pathlib import Path

from megatron_tibetan.presets import PRESETS

EXTENSION_FILE = "extension.json"


def portable_spec(spec: str | Path) -> str:
    # a preset name stays a name; a path is made absolute so conversion can run from anywhere
    return str(spec) if str(spec) in PRESETS or str(spec) == "qwen2" else str(Path(spec).resolve())


def load_extension(directory: str | Path) -> dict:
    """The ``extension.json`` of an extended tokenizer directory."""
    path = Path(directory) / EXTENSION_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not a Tibetan-extended tokenizer directory (no {EXTENSION_FILE})")
    return json.loads(path.read_text())


def line_limits(corpus: list, max_lines_per_file: int | None | list[int | None]) -> list[int | None]:
    """One line limit per corpus file from one limit for all or a list of them (None: the whole file)."""
    limits = max_lines_per_file if isinstance(max_lines_per_file, list) else [max_lines_per_file] * len(corpus)
    if len(limits) != len(corpus):
        raise ValueError(f"max_lines_per_file: {len(limits)} limits for {len(corpus)} corpus files")
    return limits
