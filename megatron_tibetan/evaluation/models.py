"""What ``--model`` may name: an HF directory, or a Megatron checkpoint directory exported to HF on the way."""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import shutil
from pathlib import Path

from megatron_tibetan import checkpoint_dir, presets
from megatron_tibetan.hf_dir import check_weights
from megatron_tibetan.convert import export_hf


def hf_model_dir(path: str | Path, export_root: str | Path | None = None) -> Path:
    """``path`` itself if it is an HF directory; for a Megatron checkpoint, its latest iteration exported
    (once, cached by path and iteration) with :func:`megatron_tibetan.convert.export_hf`."""
    path = Path(path)
    if str(path) == "smollm2":
        return presets.smollm2_hf_dir()
    if checkpoint_dir.is_checkpoint_dir(path):
        return _export(path, Path(export_root) if export_root else presets.cache_dir() / "exports")
    if (path / "config.json").is_file():
        return path
    raise FileNotFoundError(
        f"--model {path}: neither an HF model directory (config.json + safetensors) nor a Megatron checkpoint "
        f"directory ({checkpoint_dir.MODEL_SPEC} + {checkpoint_dir.TRACKER})"
    )


def _export(path: Path, root: Path) -> Path:
    iteration = checkpoint_dir.latest_iteration_dir(path)
    checkpoint_dir.verify_iteration(iteration)  # a damaged checkpoint is named before the export starts
    key = hashlib.sha1(str(iteration.resolve()).encode()).hexdigest()[:12]
    target = root / f"{path.name}.{iteration.name}.{key}"
    if (target / ".complete").exists():
        return target
    tmp = root / f".{target.name}.{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    # a child process: export initialises torch.distributed and megatron-core's CPU adjustments (a torch
    # function mode on the calling thread), which the evaluating process (plain transformers) should not inherit
    print(f"[evaluate] exporting Megatron checkpoint {iteration} to {target}", flush=True)
    child = multiprocessing.get_context("spawn").Process(target=export_hf, args=(str(path), str(tmp)))
    child.start()
    child.join()
    if child.exitcode:
        raise RuntimeError(f"exporting {path} to HF failed (exit {child.exitcode}); see the output above")
    (tmp / ".complete").touch()
    shutil.rmtree(target, ignore_errors=True)
    os.rename(tmp, target)  # a half-written export is never visible under the target name
    return target


def load(path: str | Path, tokenizer: str | None = None, export_root: str | Path | None = None,
         device: str = "cpu", dtype: str = "float32"):
    """(model in eval mode, tokenizer, HF directory) for an HF directory or a Megatron checkpoint."""
    import torch
    from transformers import AutoModelForCausalLM

    from megatron_tibetan.tokenizer.base import load_tokenizer

    where = hf_model_dir(path, export_root)
    check_weights(where)
    model = AutoModelForCausalLM.from_pretrained(str(where), dtype=getattr(torch, dtype)).to(device).eval()
    spec = tokenizer or where
    if not tokenizer and not (where / "tokenizer.json").is_file() and not (where / "tokenizer_config.json").is_file():
        raise FileNotFoundError(f"{where} has no tokenizer: pass --tokenizer")
    return model, load_tokenizer(spec), where


def named_paths(specs: list[str], option: str) -> dict[str, str]:
    """``NAME=PATH`` (or ``PATH``, named by its last component) command-line values as {name: path}."""
    named = {}
    for spec in specs:
        name, _, path = spec.rpartition("=")
        name = name or Path(path).name
        if name in named:
            raise ValueError(f"{option}: two models named {name!r}; name them with NAME=PATH")
        named[name] = path
    return named
