"""The tiny study's base model: a random tiny Llama with SmolLM2's tokenizer, written as an HF directory.

    python -m megatron_tibetan.study.tiny_model DIR [--seed 1234]
"""

from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path


def make_tiny_model(out: Path, seed: int = 1234) -> None:
    """A random tiny Llama with SmolLM2's tokenizer, saved as an HF directory (the tiny study's base model)."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    from megatron_tibetan.tokenizer.base import load_tokenizer

    tok = load_tokenizer("smollm2")
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                         tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp)
    tok.save_pretrained(tmp)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)  # never a half-written model under the final name


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m megatron_tibetan.study.tiny_model", description=__doc__.split("\n\n")[0])
    parser.add_argument("output", help="the HF directory to write")
    parser.add_argument("--seed", type=int, default=1234)
    args = parser.parse_args(argv)
    make_tiny_model(Path(args.output), args.seed)
    print(f"[study] wrote a random tiny Llama to {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
