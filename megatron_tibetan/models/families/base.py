"""What every family module declares (:class:`Family`), and the pieces dense decoder families share: the
HF-config fields every one of them maps the same way, and RoPE.

A family module (llama.py, qwen2.py, qwen3.py) declares one ``FAMILY``: the HF ``model_type`` values and
architecture name it stands for, its checks (what megatron-core cannot represent exactly), its HF-config
-> ``TransformerConfig`` fields beyond the shared ones, and its HF <-> Megatron weight table. Conversion,
model building and export read nothing else about a family.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from megatron_tibetan.models.weight_mapping import Mapping, VocabRows


class UnsupportedModelError(ValueError):
    """An HF config this project cannot represent exactly in megatron-core."""


@dataclass(frozen=True)
class Family:
    name: str
    model_types: tuple[str, ...]  # HF config "model_type" values
    architecture: str  # HF "architectures" entry written on export
    weights: list[Mapping]  # the HF <-> Megatron weight table
    check: Callable[[dict], None] = lambda hf: None  # raise UnsupportedModelError for what is not exact
    config: Callable[[dict], dict] = lambda hf: {}  # TransformerConfig fields beyond shared_config()
    ignored_hf: tuple[str, ...] = field(default=("rotary_emb.inv_freq",))  # HF buffers, not weights

    @property
    def embedding(self) -> VocabRows:
        """The input embedding's mapping (HF name: ``.hf_names[0]``)."""
        return next(m for m in self.weights if isinstance(m, VocabRows) and not m.tied)

    @property
    def output_layer(self) -> VocabRows:
        return next(m for m in self.weights if isinstance(m, VocabRows) and m.tied)

    def vocab_tensor_names(self, tied: bool) -> list[str]:
        """HF tensors with one row per token (resized when the vocabulary is extended)."""
        return [self.embedding.hf_names[0]] + ([] if tied else [self.output_layer.hf_names[0]])


def head_dim(hf: dict) -> int:
    return hf.get("head_dim") or hf["hidden_size"] // hf["num_attention_heads"]


def query_groups(hf: dict) -> int:
    return hf.get("num_key_value_heads") or hf["num_attention_heads"]


def shared_config(hf: dict) -> dict:
    """TransformerConfig fields every dense SwiGLU/RMSNorm/RoPE decoder maps the same way."""
    import torch

    return dict(
        num_layers=hf["num_hidden_layers"],
        hidden_size=hf["hidden_size"],
        ffn_hidden_size=hf["intermediate_size"],
        num_attention_heads=hf["num_attention_heads"],
        num_query_groups=query_groups(hf),
        kv_channels=head_dim(hf),
        normalization="RMSNorm",
        layernorm_epsilon=hf.get("rms_norm_eps", 1e-6),
        gated_linear_unit=True,
        activation_func=torch.nn.functional.silu,
        add_bias_linear=False,
        add_qkv_bias=False,
        qk_layernorm=False,
        hidden_dropout=0.0,
        attention_dropout=float(hf.get("attention_dropout", 0.0)),
        init_method_std=hf.get("initializer_range", 0.02),
    )


def check_shared(hf: dict) -> None:
    if hf.get("hidden_act", "silu") != "silu":
        raise UnsupportedModelError(f"hidden_act={hf['hidden_act']!r}: only SwiGLU (silu) is supported")
    rope_theta(hf)
    rope_scaling_factor(hf)


def check_no_sliding_window(hf: dict) -> None:
    if hf.get("use_sliding_window"):
        raise UnsupportedModelError(f"{hf.get('model_type')} with use_sliding_window=true is not supported")


# megatron-core's llama3 RoPE scaling fixes these three (RotaryEmbedding._apply_scaling); Llama 3.1-3.3 use them
_LLAMA3_FIXED = {"low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}


def _rope_params(hf: dict) -> dict:
    return hf.get("rope_parameters") or hf.get("rope_scaling") or {}


def rope_theta(hf: dict) -> float:
    theta = _rope_params(hf).get("rope_theta", hf.get("rope_theta"))
    if theta is None:
        raise UnsupportedModelError("HF config has no rope_theta (rope_parameters.rope_theta)")
    return float(theta)


def rope_scaling_factor(hf: dict) -> float | None:
    """None for plain RoPE; the factor for Llama 3.x scaling; an error for anything megatron-core cannot match."""
    params = _rope_params(hf)
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type == "default":
        return None
    if rope_type == "llama3":
        differ = {k: params.get(k) for k, v in _LLAMA3_FIXED.items() if float(params.get(k, -1)) != v}
        if not differ:
            return float(params["factor"])
        raise UnsupportedModelError(f"llama3 RoPE scaling with {differ}: megatron-core fixes {_LLAMA3_FIXED}")
    raise UnsupportedModelError(f"RoPE scaling {rope_type!r} is not supported (default and llama3 are)")
