"""megatron-core GPTModel from a Hugging Face config (Llama and Qwen2 families).

The *model spec* is the small dict stored as ``model.json`` in every Megatron checkpoint directory
(:mod:`megatron_tibetan.training.checkpoint`); export and training need nothing else:

    {
      "format": 1,
      "family": "llama" | "qwen2",        # selects the conversion table in megatron_tibetan.convert
      "hf_config": {...},                 # the HF config.json as a dict (vocab_size = rows HF keeps)
      "padded_vocab_size": 49152,         # rows of Megatron's embedding/output (multiple of 128, >= vocab_size)
      "params_dtype": "float32",          # dtype of the stored weights
      "tokenizer": "smollm2" | "/path" | null   # what the ids mean (a spec for tokenizer.load_tokenizer)
    }

``build_gpt_model(spec)`` builds the GPTModel (this rank's TP shard and PP stage) after
``megatron_tibetan.models.parallel.init_parallel``; ``load_model_spec_dir(dir)`` reads the spec back.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

FAMILIES = {"llama": "llama", "qwen2": "qwen2"}  # HF model_type -> conversion family
VOCAB_MULTIPLE = 128
SPEC_FORMAT = 1
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class UnsupportedModelError(ValueError):
    """An HF config this project cannot represent exactly in megatron-core."""


def pad_vocab_size(vocab_size: int, multiple: int = VOCAB_MULTIPLE) -> int:
    """Round up to a multiple of 128 so every power-of-two TP up to 128 divides it (fixed across TP)."""
    if vocab_size < 1 or multiple < 1:
        raise ValueError(f"pad_vocab_size: need vocab_size >= 1 and multiple >= 1, got {vocab_size}, {multiple}")
    return -(-vocab_size // multiple) * multiple


def family_of(hf_config: dict) -> str:
    model_type = hf_config.get("model_type")
    if model_type not in FAMILIES:
        archs = hf_config.get("architectures")
        raise UnsupportedModelError(
            f"unsupported architecture: model_type={model_type!r} (architectures={archs}); "
            f"supported: {', '.join(sorted(FAMILIES))}"
        )
    return FAMILIES[model_type]


# megatron-core's llama3 RoPE scaling fixes these three (RotaryEmbedding._apply_scaling); Llama 3.1-3.3 use them
_LLAMA3_FIXED = {"low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}


def _rope_params(hf: dict) -> dict:
    return hf.get("rope_parameters") or hf.get("rope_scaling") or {}


def _rope_theta(hf: dict) -> float:
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


def check_hf_config(hf: dict) -> str:
    """Raise UnsupportedModelError for what the conversion cannot keep exact; return the family."""
    family = family_of(hf)
    if hf.get("hidden_act", "silu") != "silu":
        raise UnsupportedModelError(f"hidden_act={hf['hidden_act']!r}: only SwiGLU (silu) is supported")
    if family == "llama" and (hf.get("attention_bias") or hf.get("mlp_bias")):
        raise UnsupportedModelError("Llama with attention_bias/mlp_bias is not supported")
    if family == "qwen2" and hf.get("use_sliding_window"):
        raise UnsupportedModelError("Qwen2 with use_sliding_window=true is not supported")
    _rope_theta(hf)
    rope_scaling_factor(hf)
    return family


def head_dim(hf: dict) -> int:
    return hf.get("head_dim") or hf["hidden_size"] // hf["num_attention_heads"]


def check_parallel(hf: dict, padded_vocab_size: int, tp: int, pp: int) -> None:
    """Clear errors for TP/PP sizes the model cannot be split by."""
    heads, groups = hf["num_attention_heads"], hf.get("num_key_value_heads") or hf["num_attention_heads"]
    if heads % tp or groups % tp:
        raise ValueError(
            f"tensor parallel size {tp} must divide the attention heads ({heads}) and the query groups "
            f"(num_key_value_heads={groups})"
        )
    if padded_vocab_size % tp:
        raise ValueError(f"tensor parallel size {tp} does not divide the padded vocabulary {padded_vocab_size}")
    if hf["num_hidden_layers"] % pp:
        raise ValueError(f"pipeline parallel size {pp} does not divide num_hidden_layers={hf['num_hidden_layers']}")


def make_model_spec(hf_config: dict, params_dtype: str = "float32", tokenizer: str | None = None,
                    padded_vocab_size: int | None = None) -> dict:
    check_hf_config(hf_config)
    if params_dtype not in _DTYPES:
        raise ValueError(f"params_dtype {params_dtype!r}: expected one of {sorted(_DTYPES)}")
    padded = padded_vocab_size or pad_vocab_size(hf_config["vocab_size"])
    if padded < hf_config["vocab_size"]:
        raise ValueError(f"padded_vocab_size {padded} < vocab_size {hf_config['vocab_size']}")
    return {
        "format": SPEC_FORMAT,
        "family": family_of(hf_config),
        "hf_config": dict(hf_config),
        "padded_vocab_size": padded,
        "params_dtype": params_dtype,
        "tokenizer": None if tokenizer is None else str(tokenizer),
    }


def transformer_config(spec: dict, **overrides):
    """A megatron-core TransformerConfig equal in function to the HF model; ``overrides`` win
    (training sets dropout, recompute, bf16, sequence_parallel... through them)."""
    from megatron.core import parallel_state
    from megatron.core.transformer import TransformerConfig

    hf = spec["hf_config"]
    family = check_hf_config(hf)
    dtype = _DTYPES[spec.get("params_dtype", "float32")]
    kwargs = dict(
        num_layers=hf["num_hidden_layers"],
        hidden_size=hf["hidden_size"],
        ffn_hidden_size=hf["intermediate_size"],
        num_attention_heads=hf["num_attention_heads"],
        num_query_groups=hf.get("num_key_value_heads") or hf["num_attention_heads"],
        kv_channels=head_dim(hf),
        normalization="RMSNorm",
        layernorm_epsilon=hf.get("rms_norm_eps", 1e-6),
        gated_linear_unit=True,
        activation_func=torch.nn.functional.silu,
        add_bias_linear=False,
        add_qkv_bias=family == "qwen2",
        hidden_dropout=0.0,
        attention_dropout=float(hf.get("attention_dropout", 0.0)),
        init_method_std=hf.get("initializer_range", 0.02),
        attention_softmax_in_fp32=True,
        # fusions that need CUDA kernels or apex; the TE spec fuses on its own
        bias_activation_fusion=False,
        bias_dropout_fusion=False,
        masked_softmax_fusion=False,
        apply_rope_fusion=False,
        persist_layer_norm=False,
        gradient_accumulation_fusion=False,
        tensor_model_parallel_size=parallel_state.get_tensor_model_parallel_world_size(),
        pipeline_model_parallel_size=parallel_state.get_pipeline_model_parallel_world_size(),
        use_cpu_initialization=not torch.cuda.is_available(),
        params_dtype=dtype,
        pipeline_dtype=dtype,
        bf16=dtype == torch.bfloat16,
        fp16=dtype == torch.float16,
    )
    kwargs.update(overrides)
    if "pipeline_dtype" not in overrides:  # activations sent between stages are in the compute dtype
        kwargs["pipeline_dtype"] = torch.bfloat16 if kwargs["bf16"] else torch.float16 if kwargs["fp16"] else kwargs["params_dtype"]
    return TransformerConfig(**kwargs)


def te_available() -> bool:
    return importlib.util.find_spec("transformer_engine") is not None


def layer_spec(use_te: bool = False):
    """Transformer Engine layer spec when asked for (and installed), else the local (pure megatron-core) spec."""
    from megatron.core.models.gpt.gpt_layer_specs import (
        get_gpt_layer_local_spec,
        get_gpt_layer_with_transformer_engine_spec,
    )

    if use_te:
        if not te_available():
            raise RuntimeError("the Transformer Engine layer spec was requested but transformer_engine is not installed")
        return get_gpt_layer_with_transformer_engine_spec()
    return get_gpt_layer_local_spec(normalization="RMSNorm")


def build_gpt_model(spec: dict, *, use_te: bool = False, pre_process: bool | None = None,
                    post_process: bool | None = None, vp_stage: int | None = None, **config_overrides):
    """This rank's GPTModel for ``spec`` (call ``init_parallel`` first). ``pre_process``/``post_process``
    default to whether this rank is the first/last pipeline stage."""
    from megatron.core import parallel_state
    from megatron.core.models.gpt import GPTModel

    hf = spec["hf_config"]
    tp = parallel_state.get_tensor_model_parallel_world_size()
    pp = parallel_state.get_pipeline_model_parallel_world_size()
    check_parallel(hf, spec["padded_vocab_size"], tp, pp)
    if pre_process is None:
        pre_process = parallel_state.is_pipeline_first_stage(ignore_virtual=vp_stage is None, vp_stage=vp_stage)
    if post_process is None:
        post_process = parallel_state.is_pipeline_last_stage(ignore_virtual=vp_stage is None, vp_stage=vp_stage)
    config = transformer_config(spec, **config_overrides)
    return GPTModel(
        config=config,
        transformer_layer_spec=layer_spec(use_te),
        vocab_size=spec["padded_vocab_size"],
        max_sequence_length=hf.get("max_position_embeddings", 4096),
        pre_process=pre_process,
        post_process=post_process,
        parallel_output=True,
        share_embeddings_and_output_weights=bool(hf.get("tie_word_embeddings", False)),
        position_embedding_type="rope",
        rotary_percent=1.0,
        rotary_base=_rope_theta(hf),
        rope_scaling=rope_scaling_factor(hf) is not None,
        rope_scaling_factor=rope_scaling_factor(hf) or 8.0,
        vp_stage=vp_stage,
    )


def load_model_spec_dir(root: str | Path) -> dict:
    """The model spec of a Megatron checkpoint directory (its model.json), checked."""
    from megatron_tibetan.training.checkpoint import load_model_spec

    spec = load_model_spec(root)
    for key in ("family", "hf_config", "padded_vocab_size"):
        if key not in spec:
            raise KeyError(f"{Path(root) / 'model.json'}: missing key {key!r}")
    check_hf_config(spec["hf_config"])
    return spec


def build_model_from_dir(root: str | Path, **kwargs):
    """(model, spec): this rank's GPTModel built from a checkpoint directory's model.json (weights not loaded;
    ``megatron_tibetan.convert.load_megatron_weights`` or training's resume load them)."""
    spec = load_model_spec_dir(root)
    return build_gpt_model(spec, **kwargs), spec
