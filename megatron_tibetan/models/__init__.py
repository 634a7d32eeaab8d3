"""megatron-core GPT models from Hugging Face configs (Llama, Qwen2): TransformerConfig, layer spec, GPTModel.

``init_parallel`` (torch.distributed + parallel_state, gloo/CPU or nccl/GPU), then ``build_gpt_model(spec)``
where ``spec`` is a model spec (``make_model_spec(hf_config_dict)`` or a checkpoint directory's model.json).
"""

from megatron_tibetan.models.gpt import (
    UnsupportedModelError,
    build_gpt_model,
    build_model_from_dir,
    check_parallel,
    layer_spec,
    load_model_spec_dir,
    make_model_spec,
    pad_vocab_size,
    transformer_config,
)
from megatron_tibetan.models.parallel import destroy_parallel, init_parallel

__all__ = [
    "UnsupportedModelError",
    "build_gpt_model",
    "build_model_from_dir",
    "check_parallel",
    "destroy_parallel",
    "init_parallel",
    "layer_spec",
    "load_model_spec_dir",
    "make_model_spec",
    "pad_vocab_size",
    "transformer_config",
]
