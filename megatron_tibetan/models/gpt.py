"""megatron-core GPTModel from a Hugging Face config, for every family in :mod:`megatron_tibetan.models.families`.

The *model spec* is the small dict stored as ``model.json`` in every Megatron checkpoint directory
(:mod:`megatron_tibetan.checkpoint_dir`); export and training need nothing else:

    {
      "format": 1,
      "family": "llama" | "qwen2" | "qwen3",  # the family module (weight table, config mapping, checks)
      "hf_config": {...},                 # the HF config.json as a dict (vocab_size = rows HF keeps)
      "padded_vocab_size": 49152,         # rows of Megatron's embedding/output (multiple of 128, >= vocab_size)
      "params_dtype": "float32",          # dtype of the stored weights
      "tokenizer": "smollm2" | "/path" | null   # what the ids mean (a spec for tokenizer.load_tokenizer)
    }

``build_gpt_model(spec)`` builds the GPTModel (this rank's TP shard and PP stage) after
``megatron_tibetan.distributed.init_parallel``; ``load_model_spec_dir(dir)`` reads the spec back.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

from megatron_tibetan import checkpoint_dir
from megatron_tibetan.config import dtype_name
from megatron_tibetan.models.families import Family, UnsupportedModelError, family_of, get_family
from megatron_tibetan.models.families.base import head_dim, query_groups, rope_scaling_factor, rope_theta, shared_config

VOCAB_MULTIPLE = 128
SPEC_FORMAT = 1
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DTYPE_NAMES = {dtype: name for name, dtype in DTYPES.items()}

__all__ = ["UnsupportedModelError", "head_dim"]


def pad_vocab_size(vocab_size: int, multiple: int = VOCAB_MULTIPLE) -> int:
    """Round up to a multiple of 128 so every power-of-two TP up to 128 divides it (fixed across TP)."""
    if vocab_size < 1 or multiple < 1:
        raise ValueError(f"pad_vocab_size: need vocab_size >= 1 and multiple >= 1, got {vocab_size}, {multiple}")
    return -(-vocab_size // multiple) * multiple


def check_hf_config(hf: dict) -> str:
    """Raise UnsupportedModelError for what the conversion cannot keep exact; return the family name."""
    return family_of(hf).name


def spec_family(spec: dict) -> Family:
    return get_family(spec["family"])


def check_parallel(hf: dict, padded_vocab_size: int, tp: int, pp: int) -> None:
    """Clear errors for TP/PP sizes the model cannot be split by."""
    heads, groups = hf["num_attention_heads"], query_groups(hf)
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
    family = family_of(hf_config)
    params_dtype = dtype_name(params_dtype)
    if params_dtype not in DTYPES:
        raise ValueError(f"params_dtype {params_dtype!r}: expected one of {sorted(DTYPES)}")
    padded = padded_vocab_size or pad_vocab_size(hf_config["vocab_size"])
    if padded < hf_config["vocab_size"]:
        raise ValueError(f"padded_vocab_size {padded} < vocab_size {hf_config['vocab_size']}")
    return {
        "format": SPEC_FORMAT,
        "family": family.name,
        "hf_config": dict(hf_config),
        "padded_vocab_size": padded,
        "params_dtype": params_dtype,
        "tokenizer": None if tokenizer is None else str(tokenizer),
    }


def transformer_config(spec: dict, device: str | None = None, **overrides):
    """A megatron-core TransformerConfig equal in function to the HF model; ``overrides`` win (training sets
    dropout, recompute, bf16, sequence_parallel... through them). ``device`` "cpu" builds the weights on the
    CPU even where a GPU exists (None: the CPU only when torch sees no GPU)."""
    from megatron.core import parallel_state
    from megatron.core.transformer import TransformerConfig

    hf = spec["hf_config"]
    family = family_of(hf)
    dtype = DTYPES[dtype_name(spec.get("params_dtype", "float32"))]
    on_cpu = device == "cpu" or not torch.cuda.is_available()
    kwargs = dict(
        **shared_config(hf),
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
        use_cpu_initialization=on_cpu,
        params_dtype=dtype,
        pipeline_dtype=dtype,
        bf16=dtype == torch.bfloat16,
        fp16=dtype == torch.float16,
    )
    kwargs.update(family.config(hf))
    kwargs.update(overrides)
    if "pipeline_dtype" not in overrides:  # activations sent between stages are in the compute dtype
        kwargs["pipeline_dtype"] = torch.bfloat16 if kwargs["bf16"] else torch.float16 if kwargs["fp16"] else kwargs["params_dtype"]
    return TransformerConfig(**kwargs)


def te_available() -> bool:
    return importlib.util.find_spec("transformer_engine") is not None


def layer_spec(use_te: bool = False, qk_layernorm: bool = False, attention: str = "sdpa"):
    """Transformer Engine layer spec when asked for (and installed), else the local (pure megatron-core) spec
    with PyTorch's fused attention (``attention="sdpa"``, models/attention.py) or megatron-core's unfused one."""
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_with_transformer_engine_spec

    from megatron_tibetan.models.attention import local_layer_spec

    if use_te:
        if not te_available():
            raise RuntimeError("the Transformer Engine layer spec was requested but transformer_engine is not installed")
        return get_gpt_layer_with_transformer_engine_spec(qk_layernorm=qk_layernorm)
    return local_layer_spec(qk_layernorm=qk_layernorm, attention=attention)


def build_gpt_model(spec: dict, *, use_te: bool = False, pre_process: bool | None = None,
                    post_process: bool | None = None, vp_stage: int | None = None, device: str | None = None,
                    **config_overrides):
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
    config = transformer_config(spec, device=device, **config_overrides)
    model = GPTModel(
        config=config,
        transformer_layer_spec=layer_spec(use_te, qk_layernorm=config.qk_layernorm),
        vocab_size=spec["padded_vocab_size"],
        max_sequence_length=hf.get("max_position_embeddings", 4096),
        pre_process=pre_process,
        post_process=post_process,
        parallel_output=True,
        share_embeddings_and_output_weights=bool(hf.get("tie_word_embeddings", False)),
        position_embedding_type="rope",
        rotary_percent=1.0,
        rotary_base=rope_theta(hf),
        rope_scaling=rope_scaling_factor(hf) is not None,
        rope_scaling_factor=rope_scaling_factor(hf) or 8.0,
        vp_stage=vp_stage,
    )
    if post_process and spec["padded_vocab_size"] > hf["vocab_size"]:
        mask_padded_vocab(model.output_layer, hf["vocab_size"])
    return model


def mask_padded_vocab(output_layer, vocab_size: int) -> None:
    """Logits of the rows Megatron pads the vocabulary with (to a multiple of 128) become -inf, so they
    take no probability: the loss and the logits then equal those of the HF model, which has no such rows,
    and the padding rows get no gradient. Works on this rank's tensor-parallel shard of the vocabulary."""
    from megatron.core import parallel_state

    def hook(module, inputs, output):
        logits, bias = output
        shard = logits.shape[-1]
        first_padded = vocab_size - parallel_state.get_tensor_model_parallel_rank() * shard
        if first_padded >= shard:
            return output
        logits[..., max(first_padded, 0):] = float("-inf")  # in place: the matmul's backward does not need it
        return logits, bias

    output_layer.register_forward_hook(hook)


def load_model_spec_dir(root: str | Path) -> dict:
    """The model spec of a Megatron checkpoint directory (its model.json), checked."""
    spec = checkpoint_dir.read_model_spec(root)
    family_of(spec["hf_config"])
    return spec


def build_model_from_dir(root: str | Path, **kwargs):
    """(model, spec): this rank's GPTModel built from a checkpoint directory's model.json (weights not loaded;
    ``megatron_tibetan.convert.load_megatron_weights`` or training's resume load them)."""
    spec = load_model_spec_dir(root)
    return build_gpt_model(spec, **kwargs), spec
