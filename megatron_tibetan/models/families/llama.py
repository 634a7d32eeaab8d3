"""Llama (Llama 2, Llama 3.x, SmolLM2, TinyLlama...): ``transformers``' LlamaForCausalLM.

The weight table is the one every family here starts from: megatron-core GPTModel names (local layer
spec first, Transformer Engine spec second where they differ: TE fuses the pre-attention and pre-MLP
norms into the next linear) against HF names, ``*`` for the layer index.
"""

from __future__ import annotations

from megatron_tibetan.models.families.base import Family, UnsupportedModelError, check_shared
from megatron_tibetan.models.weight_mapping import QKV, GatedMLP, Mapping, VocabRows

ATTN = "decoder.layers.*.self_attention"
MLP = "decoder.layers.*.mlp"
HF = "model.layers.*"

WEIGHTS: list[Mapping] = [
    VocabRows("embedding.word_embeddings.weight", "model.embed_tokens.weight"),
    VocabRows("output_layer.weight", "lm_head.weight", tied="model.embed_tokens.weight"),
    Mapping("decoder.final_layernorm.weight", "model.norm.weight"),
    Mapping(("decoder.layers.*.input_layernorm.weight", f"{ATTN}.linear_qkv.layer_norm_weight"),
            f"{HF}.input_layernorm.weight"),
    Mapping(("decoder.layers.*.pre_mlp_layernorm.weight", f"{MLP}.linear_fc1.layer_norm_weight"),
            f"{HF}.post_attention_layernorm.weight"),
    QKV(f"{ATTN}.linear_qkv.weight",
        (f"{HF}.self_attn.q_proj.weight", f"{HF}.self_attn.k_proj.weight", f"{HF}.self_attn.v_proj.weight")),
    Mapping(f"{ATTN}.linear_proj.weight", f"{HF}.self_attn.o_proj.weight"),
    GatedMLP(f"{MLP}.linear_fc1.weight", (f"{HF}.mlp.gate_proj.weight", f"{HF}.mlp.up_proj.weight")),
    Mapping(f"{MLP}.linear_fc2.weight", f"{HF}.mlp.down_proj.weight"),
]


def check(hf: dict) -> None:
    check_shared(hf)
    if hf.get("attention_bias") or hf.get("mlp_bias"):
        raise UnsupportedModelError("Llama with attention_bias/mlp_bias is not supported")


FAMILY = Family(name="llama", model_types=("llama",), architecture="LlamaForCausalLM", weights=WEIGHTS, check=check)
