"""Read an HF checkpoint tensor by tensor; write one as config.json + safetensors shards."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from megatron_tibetan import presets
from megatron_tibetan.hf_dir import INDEX, check_weights


def resolve_source(src: str | Path) -> tuple[Path, str | None]:
    """(directory, gguf file or None) for an HF source: the preset ``smollm2``, an HF directory, or a .gguf."""
    if str(src) == "smollm2":
        return presets.smollm2_hf_dir(), None
    path = Path(src)
    if path.is_file() and path.suffix == ".gguf":
        return path.parent, path.name
    if not path.is_dir():
        raise FileNotFoundError(f"HF source {src!r}: not the preset 'smollm2', an HF directory or a .gguf file")
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path / 'config.json'} not found: {path} is not an HF checkpoint directory")
    check_weights(path)
    return path, None


def safetensors_files(directory: str | Path) -> dict[str, Path] | None:
    """{tensor name: safetensors file} of an HF directory (from its index when sharded), None when it has no
    safetensors."""
    from safetensors import safe_open

    directory = Path(directory)
    index = directory / INDEX
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        return {name: directory / file for name, file in weight_map.items()}
    names = {}
    for file in sorted(directory.glob("*.safetensors")):
        with safe_open(str(file), "pt") as f:
            names.update({name: file for name in f.keys()})
    return names or None


class HFSource:
    """Tensors of an HF checkpoint by name. Safetensors directories are read lazily (one tensor in memory
    at a time); anything else ``transformers`` can load (``.bin``, GGUF) is loaded once as a model.
    ``overrides`` replace tensors (resized embeddings)."""

    def __init__(self, src: str | Path):
        from transformers import AutoConfig

        self.preset = str(src) if str(src) == "smollm2" else None
        self.dir, self.gguf = resolve_source(src)
        kwargs = {"gguf_file": self.gguf} if self.gguf else {}
        self.config = AutoConfig.from_pretrained(str(self.dir), **kwargs).to_dict()
        self.overrides: dict[str, torch.Tensor] = {}
        self._files = safetensors_files(self.dir) if not self.gguf else None
        self._state = None  # loaded on first use when there are no safetensors
        self._load_kwargs = kwargs

    def _loaded(self) -> dict[str, torch.Tensor]:
        if self._state is None:
            from transformers import AutoModelForCausalLM

            model = AutoModelForCausalLM.from_pretrained(str(self.dir), dtype="auto", **self._load_kwargs)
            self._state = dict(model.state_dict())
        return self._state

    def names(self) -> set[str]:
        return set(self._files) if self._files else set(self._loaded())

    def get(self, name: str) -> torch.Tensor:
        if name in self.overrides:
            return self.overrides[name]
        if self._files is None:
            return self._loaded()[name]
        from safetensors import safe_open

        if name not in self._files:
            raise KeyError(f"{self.dir}: no tensor {name!r}")
        with safe_open(str(self._files[name]), "pt") as f:
            return f.get_tensor(name)

    def has_tokenizer(self) -> bool:
        return self.gguf is not None or (self.dir / "tokenizer.json").is_file() or (self.dir / "tokenizer.model").is_file()

    def tokenizer_spec(self) -> str:
        """What model.json records: the preset name, else the absolute path of the directory or .gguf."""
        if self.preset:
            return self.preset
        return str((self.dir / self.gguf).resolve()) if self.gguf else str(self.dir.resolve())


class ShardWriter:
    """Write tensors into safetensors files of at most ``max_bytes`` each, with the HF index when there
    are several; memory holds one shard."""

    def __init__(self, out: Path, max_bytes: int = 2 * 1024**3):
        self.out, self.max_bytes = out, max_bytes
        self.pending: dict[str, torch.Tensor] = {}
        self.pending_bytes = 0
        self.files: list[dict[str, torch.Tensor] | str] = []
        self.weight_map: dict[str, int] = {}
        self.total_bytes = 0

    def add(self, name: str, tensor: torch.Tensor) -> None:
        size = tensor.numel() * tensor.element_size()
        if self.pending and self.pending_bytes + size > self.max_bytes:
            self._flush()
        self.pending[name] = tensor.detach().to("cpu").contiguous()
        self.pending_bytes += size
        self.total_bytes += size

    def _flush(self) -> None:
        from safetensors.torch import save_file

        index = len(self.files)
        tmp = self.out / f".shard-{index:05d}.safetensors"
        save_file(self.pending, str(tmp), metadata={"format": "pt"})
        self.weight_map.update({name: index for name in self.pending})
        self.files.append(str(tmp))
        self.pending, self.pending_bytes = {}, 0

    def close(self) -> None:
        if self.pending or not self.files:
            self._flush()
        n = len(self.files)
        names = ["model.safetensors"] if n == 1 else [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
        for tmp, name in zip(self.files, names):
            Path(tmp).rename(self.out / name)
        if n > 1:
            index = {"metadata": {"total_size": self.total_bytes},
                     "weight_map": {k: names[i] for k, i in sorted(self.weight_map.items())}}
            (self.out / INDEX).write_text(json.dumps(index, indent=2) + "\n")
