"""Layer-wise analysis of what adaptation changed: per tensor ||ΔW|| and ||ΔW|| / ||W||.

Tensors are streamed from safetensors (``safe_open``, row chunks), so memory stays at a few chunks whatever
the model size. Each tensor is classified by module type (embedding, attention q/k/v/o, MLP gate/up/down,
norms, output) and layer index; groups aggregate as sqrt(sum ||ΔW||²) / sqrt(sum ||W||²). When the adapted
vocabulary is larger than the base's, the shared rows are compared and the new rows reported on their own.
Tied embeddings are counted once (a stored ``lm_head.weight`` that is tied is skipped).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from tqdm import tqdm

from megatron_tibetan.convert.hf_io import safetensors_files

# (pattern on the HF tensor name, module type); the first match wins
MODULE_PATTERNS = [
    (r"embed_tokens\.", "embedding"),
    (r"self_attn\.q_proj\.", "attn_q"),
    (r"self_attn\.k_proj\.", "attn_k"),
    (r"self_attn\.v_proj\.", "attn_v"),
    (r"self_attn\.o_proj\.", "attn_o"),
    (r"self_attn\.[qk]_norm\.", "norm_qk"),
    (r"mlp\.gate_proj\.", "mlp_gate"),
    (r"mlp\.up_proj\.", "mlp_up"),
    (r"mlp\.down_proj\.", "mlp_down"),
    (r"input_layernorm\.", "norm_attn"),
    (r"post_attention_layernorm\.", "norm_mlp"),
    (r"(^|\.)norm\.weight$", "norm_final"),
    (r"lm_head\.", "output"),
]
MODULE_ORDER = [m for _, m in MODULE_PATTERNS] + ["other"]
_LAYER = re.compile(r"\.layers\.(\d+)\.")
CHUNK_ELEMENTS = 1 << 23  # rows per read so that a chunk holds at most ~8M values (32 MB in float32)


def classify(name: str) -> tuple[str, int | None]:
    """(module type, layer index or None) of an HF tensor name."""
    layer = _LAYER.search(name)
    module = next((m for p, m in MODULE_PATTERNS if re.search(p, name)), "other")
    return module, int(layer.group(1)) if layer else None


class Checkpoint:
    """Lazy read access to the tensors of an HF directory (single or sharded safetensors)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        files = safetensors_files(self.path)
        if files is None:
            raise FileNotFoundError(f"{self.path}: no *.safetensors or model.safetensors.index.json")
        self.files = files
        config = self.path / "config.json"
        self.config = json.loads(config.read_text()) if config.is_file() else {}
        self._open: dict[Path, object] = {}

    @property
    def tied(self) -> bool:
        return bool(self.config.get("tie_word_embeddings", False)) or "lm_head.weight" not in self.files

    def _handle(self, name: str):
        file = self.files[name]
        if file not in self._open:
            self._open[file] = safe_open(file, "pt")
        return self._open[file]

    def shape(self, name: str) -> list[int]:
        return list(self._handle(name).get_slice(name).get_shape())

    def rows(self, name: str, start: int, stop: int) -> torch.Tensor:
        return self._handle(name).get_slice(name)[start:stop].float()


def _chunks(rows: int, row_size: int):
    step = max(1, CHUNK_ELEMENTS // max(row_size, 1))
    for start in range(0, rows, step):
        yield start, min(start + step, rows)


@dataclass
class TensorChange:
    name: str
    module: str
    layer: int | None
    shape: list[int]
    delta_sq: float = 0.0  # sum of squared differences over the compared (shared) rows
    base_sq: float = 0.0
    elements: int = 0  # values compared (shared rows only)
    extended: dict | None = None  # rows only the adapted model has: {rows, shared_rows, norm, rms_row_norm, base_rms_row_norm}

    @property
    def delta_norm(self) -> float:
        return math.sqrt(self.delta_sq)

    @property
    def relative(self) -> float:
        return math.sqrt(self.delta_sq / self.base_sq) if self.base_sq > 0 else float("inf")

    def as_dict(self) -> dict:
        d = {k: getattr(self, k) for k in ("name", "module", "layer", "shape", "delta_norm", "relative")}
        d["rms_delta"] = math.sqrt(self.delta_sq / self.elements)
        d["base_norm"] = math.sqrt(self.base_sq)
        if self.extended:
            d["extended"] = self.extended
        return d


def _compare(base: Checkpoint, base_name: str, new: Checkpoint, name: str) -> TensorChange:
    """Stream one tensor of both checkpoints in row chunks."""
    module, layer = classify(name)
    b_shape, n_shape = base.shape(base_name), new.shape(name)
    change = TensorChange(name, module, layer, n_shape)
    extra_rows = n_shape[0] - b_shape[0] if n_shape and b_shape else 0
    if b_shape[1:] != n_shape[1:] or extra_rows < 0 or (extra_rows and module not in ("embedding", "output")):
        raise ValueError(f"tensor {name}: shape {n_shape} in {new.path} cannot be compared with {b_shape} in {base.path}")
    if not b_shape:
        raise ValueError(f"tensor {name} in {base.path} is a scalar: not a weight to compare")
    row_size = math.prod(b_shape[1:])
    change.elements = b_shape[0] * row_size
    for start, stop in _chunks(b_shape[0], row_size):
        w = base.rows(base_name, start, stop)
        change.delta_sq += (new.rows(name, start, stop) - w).square().sum(dtype=torch.float64).item()
        change.base_sq += w.square().sum(dtype=torch.float64).item()
    if extra_rows:
        new_sq = _sum_sq(new, name, b_shape[0], n_shape[0], row_size)
        change.extended = {
            "rows": extra_rows,
            "shared_rows": b_shape[0],
            "norm": math.sqrt(new_sq),
            "rms_row_norm": math.sqrt(new_sq / extra_rows),
            "base_rms_row_norm": math.sqrt(change.base_sq / b_shape[0]),
        }
    return change


def _sum_sq(ckpt: Checkpoint, name: str, start: int, stop: int, row_size: int) -> float:
    total = 0.0
    for s, e in _chunks(stop - start, row_size):
        total += ckpt.rows(name, start + s, start + e).square().sum(dtype=torch.float64).item()
    return total


def _embedding_name(ckpt: Checkpoint) -> str | None:
    return next((n for n in ckpt.files if classify(n)[0] == "embedding"), None)


def compare(base_dir: str | Path, new_dir: str | Path, progress: bool = True) -> dict:
    """Every tensor of ``new_dir`` against ``base_dir``: per tensor, per module type, per layer, per cell."""
    base, new = Checkpoint(base_dir), Checkpoint(new_dir)
    changes, added, tied_skipped = [], [], []
    for name in tqdm(sorted(new.files, key=_natural), desc=f"{new.path.name} vs {base.path.name}", disable=not progress):
        base_name = name
        if classify(name)[0] == "output" and new.tied:
            tied_skipped.append(name)  # the same matrix as the embedding: counted once, there
            continue
        if name not in base.files and classify(name)[0] == "output" and base.tied:
            base_name = _embedding_name(base)  # base ties its output to the embedding; the adapted model unties it
        if base_name not in base.files:
            added.append(name)
            continue
        changes.append(_compare(base, base_name, new, name))
    compared = {c.name for c in changes} | set(tied_skipped)
    missing = [n for n in base.files if n not in compared and not (classify(n)[0] == "output" and base.tied)]
    return {
        "base": str(base.path),
        "adapted": str(new.path),
        "tensors": [c.as_dict() for c in changes],
        "modules": _group(changes, lambda c: c.module),
        "layers": _group([c for c in changes if c.layer is not None], lambda c: c.layer),
        "cells": _group([c for c in changes if c.layer is not None], lambda c: f"{c.layer}/{c.module}"),
        "total": _group(changes, lambda c: "all")["all"],
        "extended_vocabulary": {c.name: c.extended for c in changes if c.extended},
        "tied_counted_once": tied_skipped,
        "only_in_adapted": added,
        "only_in_base": missing,
    }


def _natural(name: str):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def _group(changes: list[TensorChange], key) -> dict:
    sums: dict = {}
    for c in changes:
        d, b, e, n = sums.get(key(c), (0.0, 0.0, 0, 0))
        sums[key(c)] = (d + c.delta_sq, b + c.base_sq, e + c.elements, n + 1)
    # rms_delta (root mean square change per value) separates "how far the optimiser moved" from the
    # weights' own scale: Adam moves every value by about the same step early on
    return {
        k: {"delta_norm": math.sqrt(d), "relative": math.sqrt(d / b) if b > 0 else float("inf"),
            "rms_delta": math.sqrt(d / e), "tensors": n}
        for k, (d, b, e, n) in sums.items()
    }


def _ranks(x: np.ndarray) -> np.ndarray:
    return np.argsort(np.argsort(x)).astype(float)


def correlation(a: dict, b: dict) -> dict:
    """How alike two comparisons' change profiles are, over the tensors both compared."""
    ra = {t["name"]: t["relative"] for t in a["tensors"]}
    rb = {t["name"]: t["relative"] for t in b["tensors"]}
    common = [n for n in ra if n in rb and 0 < ra[n] < math.inf and 0 < rb[n] < math.inf]
    if len(common) < 3:
        return {"tensors": len(common), "pearson_log": None, "spearman": None}
    x, y = np.log10([ra[n] for n in common]), np.log10([rb[n] for n in common])
    return {
        "tensors": len(common),
        "pearson_log": float(np.corrcoef(x, y)[0, 1]),
        "spearman": float(np.corrcoef(_ranks(x), _ranks(y))[0, 1]),
    }


def analyze(base: str | Path, adapted: list[str | Path], names: list[str] | None = None, chain: bool = False,
            progress: bool = True) -> dict:
    """Compare each adapted model with ``base`` (or, with ``chain``, with the model before it: base -> CPT -> SFT),
    and correlate the change profiles of every pair of comparisons."""
    names = names or [Path(p).name for p in adapted]
    if len(set(names)) != len(names):
        raise ValueError(f"model names must differ: {names}")
    references = [base] + list(adapted[:-1]) if chain else [base] * len(adapted)
    ref_names = ([Path(base).name] + names[:-1]) if chain else [Path(base).name] * len(adapted)
    comparisons = {}
    for name, ref, ref_name, path in zip(names, references, ref_names, adapted):
        comparisons[name] = compare(ref, path, progress=progress) | {"reference": ref_name}
    keys = list(comparisons)
    correlations = {
        f"{a}~{b}": correlation(comparisons[a], comparisons[b]) for i, a in enumerate(keys) for b in keys[i + 1:]
    }
    return {"base": str(base), "chain": chain, "comparisons": comparisons, "correlations": correlations}
