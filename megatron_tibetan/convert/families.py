"""One conversion table per architecture family; import and export both read these.

Megatron names are those of megatron-core's GPTModel (local layer spec first, Transformer Engine spec
second where they differ); HF names those of ``transformers``' LlamaForCausalLM / Qwen2ForCausalLM.
"""

from __future__ import annotations

from megatron_tibetan.convert.mapping import QKV, GatedMLP, Mapping, VocabRows

_ATTN = "decoder.layers.*.self_attention"
_MLP = "decoder.layers.*.mlp"
_HF = "model.layers.*"

LLAMA: list[Mapping] = [
    VocabRows("embedding.word_embeddings.weight", "model.embed_tokens.weight"),
    VocabRows("output_layer.weight", "lm_head.weight", tied="model.embed_tokens.weight"),
    Mapping("decoder.final_layernorm.weight", "model.norm.weight"),
    Mapping(("decoder.layers.*.input_layernorm.weight", f"{_ATTN}.linear_qkv.layer_norm_weight"),
            f"{_HF}.input_layernorm.weight"),
    Mapping(("decoder.layers.*.pre_mlp_layernorm.weight", f"{_MLP}.linear_fc1.layer_norm_weight"),
            f"{_HF}.post_attention_layernorm.weight"),
    QKV(f"{_ATTN}.linear_qkv.weight",
        (f"{_HF}.self_attn.q_proj.weight", f"{_HF}.self_attn.k_proj.weight", f"{_HF}.self_attn.v_proj.weight")),
    Mapping(f"{_ATTN}.linear_proj.weight", f"{_HF}.self_attn.o_proj.weight"),
    GatedMLP(f"{_MLP}.linear_fc1.weight", (f"{_HF}.mlp.gate_proj.weight", f"{_HF}.mlp.up_proj.weight")),
    Mapping(f"{_MLP}.linear_fc2.weight", f"{_HF}.mlp.down_proj.weight"),
]

QWEN2: list[Mapping] = LLAMA + [
    QKV(f"{_ATTN}.linear_qkv.bias",
        (f"{_HF}.self_attn.q_proj.bias", f"{_HF}.self_attn.k_proj.bias", f"{_HF}.self_attn.v_proj.bias")),
]

TABLES = {"llama": LLAMA, "qwen2": QWEN2}

# HF tensors that carry no weights (recomputed buffers); skipped on import and counted
IGNORED_HF = ("rotary_emb.inv_freq",)


def table(family: str) -> list[Mapping]:
    if family not in TABLES:
        raise ValueError(f"no conversion table for family {family!r}; known: {', '.join(sorted(TABLES))}")
    return TABLES[family]
