"""A small Megatron indexed dataset of real Tibetan (first lines of Nanhai), for the training tests.

Written with megatron-core's IndexedDatasetBuilder from SmolLM2 token ids of normalised text, one
document per line with eod appended: the format tools/preprocess_data.py writes.
Usage: python tests/train_data.py PREFIX N_LINES [SOURCE]
"""

from __future__ import annotations

import lzma
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NANHAI = ROOT.parent / "shared" / "data" / "mono" / "nanhai.bo.txt.xz"
sys.path.insert(0, str(ROOT))  # run as a script before the package is installed


def write_dataset(prefix: str | Path, n_lines: int, source: Path = NANHAI, tokenizer: str = "smollm2") -> str:
    """Write ``{prefix}.bin/.idx`` from the first ``n_lines`` non-empty lines of ``source``; returns the prefix."""
    import numpy
    import torch
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    from megatron_tibetan.text.normalize import normalize
    from megatron_tibetan.tokenizer.base import load_tokenizer

    tok = load_tokenizer(tokenizer)
    prefix = str(prefix)
    Path(prefix).parent.mkdir(parents=True, exist_ok=True)
    opener = lzma.open if str(source).endswith(".xz") else open
    builder = IndexedDatasetBuilder(f"{prefix}.bin", dtype=numpy.uint16)
    written = 0
    with opener(source, "rt", encoding="utf-8") as f:
        for line in f:
            text = normalize(line.strip())
            if not text:
                continue
            ids = tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
            builder.add_document(torch.tensor(ids, dtype=torch.int64), [len(ids)])
            written += 1
            if written == n_lines:
                break
    builder.finalize(f"{prefix}.idx")
    return prefix


if __name__ == "__main__":
    write_dataset(sys.argv[1], int(sys.argv[2]), Path(sys.argv[3]) if len(sys.argv) > 3 else NANHAI)
