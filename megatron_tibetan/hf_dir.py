"""What a Hugging Face model directory holds, checked when it is opened: every weight file its index
names exists, and each safetensors file is whole (its header parses and the tensors it declares end
exactly at the end of the file). A stat and a header read per file; no tensor is read.

Used by every tool that opens an HF directory (conversion, evaluation, the study), so a truncated copy or a
missing shard is named in one line before a model is built.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

INDEX = "model.safetensors.index.json"
_MAX_HEADER = 100 * 1024 * 1024  # safetensors' own limit on the JSON header


class HFDirError(ValueError):
    """A damaged or incomplete HF model directory; the message names the file, the expected and the found."""


def check_safetensors(path: str | Path) -> None:
    """``path`` is a whole safetensors file, or :class:`HFDirError` says what is wrong with it."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise HFDirError(f"{path}: {size} bytes, too short for a safetensors header: the file is truncated")
        (length,) = struct.unpack("<Q", head)
        if length > min(_MAX_HEADER, size - 8):
            raise HFDirError(f"{path}: its header declares {length} bytes of metadata but the file has {size} bytes "
                             f"in all: the file is truncated or not a safetensors file")
        try:
            header = json.loads(f.read(length))
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise HFDirError(f"{path}: unreadable safetensors header ({error}): the file is damaged") from None
    if not isinstance(header, dict):
        raise HFDirError(f"{path}: the safetensors header is not an object: the file is damaged")
    ends = [entry["data_offsets"][1] for name, entry in header.items()
            if name != "__metadata__" and isinstance(entry, dict) and "data_offsets" in entry]
    expected = 8 + length + max(ends, default=0)
    if size != expected:
        raise HFDirError(f"{path}: {size} bytes, but its header declares tensors up to byte {expected}: "
                         f"the file is {'truncated' if size < expected else 'followed by extra bytes'}; copy it again")


def check_weights(directory: str | Path) -> None:
    """The weight files of an HF directory are all there and whole: those its safetensors index names, else
    every ``*.safetensors`` in it. A directory with no safetensors (``.bin``, GGUF) is left to its loader."""
    directory = Path(directory)
    index = directory / INDEX
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as error:
            raise HFDirError(f"{index}: not a safetensors index with a 'weight_map' ({error!r})") from None
        files = sorted(set(weight_map.values()))
        missing = [f for f in files if not (directory / f).is_file()]
        if missing:
            raise HFDirError(f"{index} names {len(files)} weight file(s), but {', '.join(str(directory / f) for f in missing)} "
                             f"{'is' if len(missing) == 1 else 'are'} missing: copy the whole directory")
        paths = [directory / f for f in files]
    else:
        paths = sorted(directory.glob("*.safetensors"))
    for path in paths:
        check_safetensors(path)
