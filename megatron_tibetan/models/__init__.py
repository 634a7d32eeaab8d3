"""megatron-core GPT models from Hugging Face configs: one module per family (``families/``), the
TransformerConfig and layer spec, GPTModel.

``megatron_tibetan.distributed.init_parallel`` first (torch.distributed + parallel_state, gloo/CPU or
nccl/GPU), then ``build_gpt_model(spec)`` where ``spec`` is a model spec (``make_model_spec(hf_config_dict)``
or a checkpoint directory's model.json).
"""

from megatron_tibetan.models.families import FAMILIES, Family, UnsupportedModelError, family_of, get_family
from megatron_tibetan.models.gpt import (
    build_gpt_model,
    build_model_from_dir,
    check_parallel,
    layer_spec,
    load_model_spec_dir,
    make_model_spec,
    pad_vocab_size,
    transformer_config,
)

__all__ = [
    "FAMILIES",
    "Family",
    "UnsupportedModelError",
    "build_gpt_model",
    "build_model_from_dir",
    "check_parallel",
    "family_of",
    "get_family",
    "layer_spec",
    "load_model_spec_dir",
    "make_model_spec",
    "pad_vocab_size",
    "transformer_config",
]
