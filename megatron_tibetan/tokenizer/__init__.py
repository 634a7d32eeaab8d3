"""Tokenizers: load any base tokenizer; train and merge Tibetan pieces; fertility."""

from megatron_tibetan.tokenizer.base import load_tokenizer

__all__ = ["load_tokenizer"]
