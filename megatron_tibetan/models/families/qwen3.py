"""Qwen3 (dense): ``transformers``' Qwen3ForCausalLM. Llama's layout without biases, plus an RMSNorm over
each query and key head before RoPE (megatron-core's ``qk_layernorm``); the head dimension is its own
config value (128), not hidden_size / heads."""

from __future__ import annotations

from megatron_tibetan.models.families import llama
from megatron_tibetan.models.families.base import Family, UnsupportedModelError, check_no_sliding_window, check_shared
from megatron_tibetan.models.weight_mapping import Mapping

WEIGHTS = llama.WEIGHTS + [
    Mapping(f"{llama.ATTN}.q_layernorm.weight", f"{llama.HF}.self_attn.q_norm.weight"),
    Mapping(f"{llama.ATTN}.k_layernorm.weight", f"{llama.HF}.self_attn.k_norm.weight"),
]


def check(hf: dict) -> None:
    check_shared(hf)
    check_no_sliding_window(hf)
    if hf.get("attention_bias"):
        raise UnsupportedModelError("Qwen3 with attention_bias=true is not supported")


FAMILY = Family(name="qwen3", model_types=("qwen3",), architecture="Qwen3ForCausalLM", weights=WEIGHTS, check=check,
                config=lambda hf: {"qk_layernorm": True})
