"""The Megatron checkpoint directory, shared by the converter and the training loop.

    DIR/
      model.json          what the model is (HF config, family, padded vocabulary, tokenizer): export and
                          training need nothing else
      latest              the name of the newest *complete* iteration folder; moved only after a save ends
      iter_0000000/       a megatron-core dist_checkpointing checkpoint (torch_dist); the model's sharded
                          state dict under "model" (training adds optimizer, scheduler, RNG, data position)
"""

from __future__ import annotations

import json
import os
from pathlib import Path

MODEL_SPEC = "model.json"
LATEST = "latest"


def iteration_dir(root: str | Path, iteration: int) -> Path:
    return Path(root) / f"iter_{iteration:07d}"


def write_latest(root: str | Path, iteration: int) -> None:
    """Point ``latest`` at a finished save; atomic (a crash leaves the old pointer)."""
    root = Path(root)
    tmp = root / f".{LATEST}.tmp"
    tmp.write_text(iteration_dir(root, iteration).name + "\n")
    os.replace(tmp, root / LATEST)


def latest_iteration_dir(root: str | Path) -> Path:
    root = Path(root)
    pointer = root / LATEST
    if not pointer.is_file():
        raise FileNotFoundError(f"{root}: no '{LATEST}' file, so no complete checkpoint (is this a Megatron checkpoint directory?)")
    path = root / pointer.read_text().strip()
    if not path.is_dir():
        raise FileNotFoundError(f"{pointer} names {path.name}, which does not exist")
    return path


def save_model_spec(root: str | Path, spec: dict) -> None:
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".{MODEL_SPEC}.tmp"
    tmp.write_text(json.dumps(spec, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, root / MODEL_SPEC)


def load_model_spec(root: str | Path) -> dict:
    path = Path(root) / MODEL_SPEC
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: a Megatron checkpoint directory made by tools/convert_checkpoint.py import or by training has one")
    return json.loads(path.read_text())
