"""What a Megatron checkpoint directory is, and the one atomic way to write an iteration into it.

The layout is Megatron-LM's (``megatron/training/checkpointing.py``), so checkpoints move between the two:

    DIR/
      latest_checkpointed_iteration.txt   the newest *complete* iteration, as a number ("40"); moved only
                                          after that iteration's folder is complete (older checkpoints of
                                          this project have ``latest`` naming the folder: still read)
      iter_0000040/                       megatron-core dist_checkpointing, torch_dist format; the model's
                                          sharded state dict under "model" ("model0", "model1"... for virtual
                                          pipeline chunks); common state "iteration", "checkpoint_version"
                                          (3.0, Megatron-LM's current) and, from training, the optimizer,
                                          "opt_param_scheduler", RNG and "train_state"
      model.json                          what the model is (HF config, family, padded vocabulary, tokenizer):
                                          export and training need nothing else (this project's addition)
      config.yaml                         the resolved training config of the run that wrote the newest
                                          iteration (each iteration folder holds its own copy too)

Every writer goes through :func:`save_iteration`: the state is written into a hidden
``.iter_NNNNNNN.partial`` folder, renamed when every rank is done, and only then does the tracker move, so
a process killed mid-save leaves the previous checkpoint untouched and loadable. :func:`load_model_weights`
is the one weights-only load (conversion, export, fine-tuning). Bottom layer: imports none of the
project's other layers (megatron-core only).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

MODEL_SPEC = "model.json"
TRACKER = "latest_checkpointed_iteration.txt"
LEGACY_TRACKER = "latest"
CONFIG = "config.yaml"
CHECKPOINT_VERSION = 3.0  # Megatron-LM's; below 2.0 it would reorder the QKV weights on load
SPEC_KEYS = ("family", "hf_config", "padded_vocab_size")


def iteration_dir(root: str | Path, iteration: int) -> Path:
    return Path(root) / f"iter_{iteration:07d}"


def has_checkpoint(root: str | Path) -> bool:
    """Whether ``root`` has a tracker file (a complete save happened)."""
    root = Path(root)
    return (root / TRACKER).is_file() or (root / LEGACY_TRACKER).is_file()


def is_checkpoint_dir(root: str | Path) -> bool:
    return (Path(root) / MODEL_SPEC).is_file() and has_checkpoint(root)


def write_tracker(root: str | Path, iteration: int) -> None:
    """Point the tracker at a finished save; atomic (a crash leaves the old pointer)."""
    root = Path(root)
    tmp = root / f".{TRACKER}.tmp"
    tmp.write_text(f"{iteration}\n")
    os.replace(tmp, root / TRACKER)
    legacy = root / LEGACY_TRACKER
    if legacy.is_file():  # a directory written before the Megatron-LM tracker: keep both in step
        legacy.unlink()


def latest_iteration_dir(root: str | Path) -> Path:
    """The folder of the newest complete iteration (from the tracker file)."""
    root = Path(root)
    tracker, legacy = root / TRACKER, root / LEGACY_TRACKER
    if tracker.is_file():
        text = tracker.read_text().strip()
        if text == "release":
            path = root / "release"
        else:
            try:
                path = iteration_dir(root, int(text))
            except ValueError:
                raise ValueError(f"{tracker}: expected an iteration number or 'release', found {text!r}") from None
    elif legacy.is_file():
        path = root / legacy.read_text().strip()
        tracker = legacy
    else:
        raise FileNotFoundError(f"{root}: no {TRACKER}, so no complete checkpoint (is this a Megatron checkpoint directory?)")
    if not path.is_dir():
        raise FileNotFoundError(f"{tracker} names {path.name}, which does not exist")
    return path


def save_model_spec(root: str | Path, spec: dict) -> None:
    _write_atomic(Path(root) / MODEL_SPEC, json.dumps(spec, indent=2, sort_keys=True) + "\n")


def read_model_spec(root: str | Path) -> dict:
    """The model spec (model.json) of a checkpoint directory, with its required keys checked."""
    path = Path(root) / MODEL_SPEC
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: a Megatron checkpoint directory made by "
                                "tools/convert_checkpoint.py import or by training has one")
    try:
        spec = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from e
    missing = [key for key in SPEC_KEYS if key not in spec]
    if missing:
        raise KeyError(f"{path}: missing key(s) {', '.join(map(repr, missing))}")
    return spec


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


# --- collective save and load -----------------------------------------------------------------------------

def _barrier() -> None:
    import torch

    if torch.distributed.is_initialized():
        torch.distributed.barrier()


def is_rank0() -> bool:
    import torch

    return not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0


def unwrap(module):
    """The GPTModel inside DDP / Float16Module wrappers (its sharded_state_dict has the global names)."""
    while hasattr(module, "module"):
        module = module.module
    return module


def model_key(i: int, n: int) -> str:
    """Megatron-LM's key of model chunk ``i`` of ``n``."""
    return "model" if n == 1 else f"model{i}"


def model_sharded_state(model_chunks) -> dict:
    return {model_key(i, len(model_chunks)): unwrap(m).sharded_state_dict() for i, m in enumerate(model_chunks)}


def save_iteration(root: str | Path, iteration: int, state: dict, spec: dict | None = None,
                   config_text: str | None = None, keep_last: int | None = None,
                   protect: tuple[Path, ...] = ()) -> Path:
    """Write ``state`` (a sharded state dict; "iteration" and "checkpoint_version" are added) as
    ``root/iter_NNNNNNN`` atomically, then move the tracker; collective (every rank calls it).

    ``spec`` is written as model.json and ``config_text`` as config.yaml (beside the tracker and inside the
    iteration folder). ``keep_last`` prunes older iteration folders, never one in ``protect`` (for example
    the checkpoint this run started from).
    """
    from megatron.core import dist_checkpointing

    root = Path(root)
    final = iteration_dir(root, iteration)
    partial = root / f".{final.name}.partial"
    if is_rank0():
        _remove(partial)  # the remains of a save that was killed
        partial.mkdir(parents=True)
        if spec is not None:
            save_model_spec(root, spec)
    _barrier()
    dist_checkpointing.save({**state, "iteration": iteration, "checkpoint_version": CHECKPOINT_VERSION}, str(partial))
    _barrier()
    if is_rank0():
        if config_text is not None:
            (partial / CONFIG).write_text(config_text)
        _remove(final)
        os.replace(partial, final)
        write_tracker(root, iteration)
        if config_text is not None:
            _write_atomic(root / CONFIG, config_text)
        if keep_last:
            prune(root, keep_last, protect)
    _barrier()
    return final


def load_model_weights(path: str | Path, model_chunks) -> Path:
    """Load the model weights of an iteration folder, or of a checkpoint directory's newest iteration, into
    this rank's model chunks (any TP/PP: dist_checkpointing reshards). Returns the folder read."""
    from megatron.core import dist_checkpointing

    path = Path(path)
    if has_checkpoint(path):
        path = latest_iteration_dir(path)
    if not path.is_dir():
        raise FileNotFoundError(f"checkpoint folder {path} does not exist")
    set_model_state(model_chunks, dist_checkpointing.load(model_sharded_state(model_chunks), str(path)))
    return path


def set_model_state(model_chunks, loaded: dict) -> None:
    """Copy the model part of a loaded state dict into the chunks (strict: every parameter)."""
    for i, m in enumerate(model_chunks):
        unwrap(m).load_state_dict(loaded[model_key(i, len(model_chunks))], strict=True)


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)


def prune(root: str | Path, keep_last: int, protect: tuple[Path, ...] = ()) -> list[Path]:
    """Delete all but the newest ``keep_last`` complete iteration folders; never the one the tracker names
    nor any in ``protect``."""
    root = Path(root)
    keep = {latest_iteration_dir(root).resolve(), *(Path(p).resolve() for p in protect)}
    folders = sorted(p for p in root.glob("iter_*") if p.is_dir())
    removed = [p for p in folders[:-keep_last] if p.resolve() not in keep]
    for p in removed:
        _remove(p)
    return removed
