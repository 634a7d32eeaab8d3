"""Qwen2 and Qwen2.5: ``transformers``' Qwen2ForCausalLM. Llama's layout plus biases on q, k and v."""

from __future__ import annotations

from megatron_tibetan.models.families import llama
from megatron_tibetan.models.families.base import Family, check_no_sliding_window, check_shared
from megatron_tibetan.models.weight_mapping import QKV

WEIGHTS = llama.WEIGHTS + [
    QKV(f"{llama.ATTN}.linear_qkv.bias", (f"{llama.HF}.self_attn.q_proj.bias", f"{llama.HF}.self_attn.k_proj.bias",
                                          f"{llama.HF}.self_attn.v_proj.bias")),
]


def check(hf: dict) -> None:
    check_shared(hf)
    check_no_sliding_window(hf)


FAMILY = Family(name="qwen2", model_types=("qwen2",), architecture="Qwen2ForCausalLM", weights=WEIGHTS, check=check,
                config=lambda hf: {"add_qkv_bias": True})
