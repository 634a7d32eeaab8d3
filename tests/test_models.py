"""megatron_tibetan.cpu (megatron-core on a CPU-only torch) and megatron_tibetan.models (GPTModel from HF configs)."""

from __future__ import annotations

import pytest
import torch

LLAMA = dict(model_type="llama", vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-5, tie_word_embeddings=False,
             rope_parameters={"rope_type": "default", "rope_theta": 500000.0}, max_position_embeddings=64)
QWEN2 = dict(LLAMA, model_type="qwen2", tie_word_embeddings=True, rope_parameters={"rope_type": "default", "rope_theta": 1e6})


@pytest.fixture(scope="module")
def parallel():
    from megatron_tibetan.distributed import init_parallel

    init_parallel(1, 1)


def test_cpu_apply_is_idempotent_and_moves_cuda_to_cpu(parallel):
    from megatron_tibetan import cpu

    assert cpu.needed() and cpu.is_applied()
    assert cpu.apply() is True  # second call: nothing more
    assert torch.zeros(2, device="cuda").device.type == "cpu"
    assert torch.ones(2).cuda().device.type == "cpu"
    assert torch.cuda.current_device() == torch.device("cpu")
    # only megatron-core is told the CUDA type name; everyone else gets the truth
    assert torch.ones(1).type() == "torch.FloatTensor"


def test_cpu_grad_clipping_matches_torch(parallel):
    """clip_grads asserts grad.type() == 'torch.cuda.FloatTensor'; on CPU it must clip as torch does."""
    from megatron.core.optimizer.clip_grads import clip_grad_by_total_norm_fp32, get_grad_norm_fp32

    params = [torch.nn.Parameter(torch.randn(5, 3)) for _ in range(2)]
    reference = [torch.nn.Parameter(p.detach().clone()) for p in params]
    for p, r in zip(params, reference):
        p.grad = torch.randn_like(p)
        r.grad = p.grad.clone()
    norm = get_grad_norm_fp32([p.grad for p in params])
    clip_grad_by_total_norm_fp32(params, 0.5, norm)
    expected = torch.nn.utils.clip_grad_norm_(reference, 0.5)
    assert norm == pytest.approx(expected.item(), rel=1e-6)
    for p, r in zip(params, reference):
        torch.testing.assert_close(p.grad, r.grad)


def test_cpu_rng_tracker_forks_keep_streams_apart(parallel):
    """Draws inside a named fork do not advance the default stream, and the fork stream is seeded."""
    from megatron.core.tensor_parallel import get_cuda_rng_tracker, model_parallel_cuda_manual_seed

    model_parallel_cuda_manual_seed(123)
    plain = torch.rand(4)
    model_parallel_cuda_manual_seed(123)
    with get_cuda_rng_tracker().fork():
        forked = torch.rand(4)
    after_fork = torch.rand(4)
    assert torch.equal(after_fork, plain)
    assert not torch.equal(forked, plain)
    model_parallel_cuda_manual_seed(123)
    with get_cuda_rng_tracker().fork():
        assert torch.equal(torch.rand(4), forked)


def _loss_and_grads(spec, **overrides):
    from megatron.core.tensor_parallel import model_parallel_cuda_manual_seed

    from megatron_tibetan.models import build_gpt_model

    model_parallel_cuda_manual_seed(7)
    model = build_gpt_model(spec, hidden_dropout=0.2, attention_dropout=0.2, **overrides)
    ids = torch.randint(0, 300, (2, 16), generator=torch.Generator().manual_seed(0))
    loss = model(ids, torch.arange(16).unsqueeze(0).expand(2, -1), None, labels=ids).mean()
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def test_activation_recompute_replays_dropout_exactly(parallel):
    """Full recompute re-runs the forward in backward under the saved RNG states: same loss and grads."""
    from megatron_tibetan.models import make_model_spec

    spec = make_model_spec(QWEN2)
    loss, grads = _loss_and_grads(spec)
    loss_rc, grads_rc = _loss_and_grads(spec, recompute_granularity="full", recompute_method="uniform",
                                        recompute_num_layers=1)
    assert torch.equal(loss, loss_rc)
    for name, grad in grads.items():
        assert torch.equal(grad, grads_rc[name]), name


def test_transformer_config_from_hf(parallel):
    from megatron_tibetan.models import make_model_spec, transformer_config

    llama, qwen = transformer_config(make_model_spec(LLAMA)), transformer_config(make_model_spec(QWEN2))
    assert (llama.num_query_groups, llama.kv_channels, llama.ffn_hidden_size) == (2, 16, 96)
    assert llama.normalization == "RMSNorm" and llama.gated_linear_unit and llama.layernorm_epsilon == 1e-5
    assert not llama.add_qkv_bias and qwen.add_qkv_bias and not qwen.add_bias_linear
    assert transformer_config(make_model_spec(LLAMA), bf16=True).pipeline_dtype == torch.bfloat16


def test_build_gpt_model_embeddings_and_stages(parallel):
    from megatron_tibetan.models import build_gpt_model, make_model_spec

    spec = make_model_spec(QWEN2)
    assert spec["padded_vocab_size"] == 384
    model = build_gpt_model(spec)
    assert model.share_embeddings_and_output_weights and model.rotary_pos_emb.inv_freq[1].item() == pytest.approx(1e6 ** (-2 / 16))
    assert model.embedding.word_embeddings.weight.shape == (384, 64)
    untied = build_gpt_model(make_model_spec(LLAMA))
    assert untied.output_layer.weight is not None and not untied.share_embeddings_and_output_weights
    middle = build_gpt_model(spec, pre_process=False, post_process=False)
    assert not hasattr(middle, "embedding") and not hasattr(middle, "output_layer")


def test_model_spec_round_trip_through_checkpoint_dir(parallel, tmp_path):
    from megatron_tibetan.models import build_model_from_dir, make_model_spec
    from megatron_tibetan.checkpoint_dir import save_model_spec

    save_model_spec(tmp_path, make_model_spec(LLAMA, tokenizer="smollm2"))
    model, spec = build_model_from_dir(tmp_path)
    assert spec["family"] == "llama" and spec["tokenizer"] == "smollm2" and len(model.decoder.layers) == 2


def test_clear_errors():
    from megatron_tibetan.models import UnsupportedModelError, check_parallel, layer_spec, make_model_spec

    with pytest.raises(UnsupportedModelError, match="model_type='mistral'"):
        make_model_spec(dict(LLAMA, model_type="mistral"))
    with pytest.raises(UnsupportedModelError, match="RoPE scaling 'yarn'"):
        make_model_spec(dict(LLAMA, rope_parameters={"rope_type": "yarn", "rope_theta": 5e5, "factor": 8.0}))
    llama3 = {"rope_type": "llama3", "rope_theta": 5e5, "factor": 8.0, "low_freq_factor": 2.0,
              "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
    with pytest.raises(UnsupportedModelError, match="low_freq_factor"):
        make_model_spec(dict(LLAMA, rope_parameters=llama3))
    with pytest.raises(UnsupportedModelError, match="attention_bias"):
        make_model_spec(dict(LLAMA, attention_bias=True))
    with pytest.raises(ValueError, match="must divide the attention heads"):
        check_parallel(LLAMA, 384, tp=4, pp=1)
    with pytest.raises(ValueError, match="does not divide num_hidden_layers=2"):
        check_parallel(LLAMA, 384, tp=1, pp=3)
    with pytest.raises(RuntimeError, match="transformer_engine is not installed"):
        layer_spec(use_te=True)


CPU_ON_A_GPU_MACHINE = """
import torch
torch.cuda.is_available = lambda: True  # a machine with a GPU, as torch would report it
from megatron_tibetan.distributed import init_parallel
from megatron_tibetan.models import build_gpt_model, make_model_spec
init_parallel(1, 1, device="cpu")
assert not torch.cuda.is_available(), "CPU was asked for: torch must report no GPU to megatron-core"
assert torch.distributed.get_backend() == "gloo"
model = build_gpt_model(make_model_spec(LLAMA), device="cpu")
assert model.config.use_cpu_initialization
assert {p.device.type for p in model.parameters()} == {"cpu"}
ids = torch.randint(0, 300, (1, 8))
logits = model(ids, torch.arange(8).unsqueeze(0), None)
assert logits.device.type == "cpu" and logits.shape[:2] == (1, 8)
print("ok")
"""


def test_cpu_means_cpu_on_a_machine_with_a_gpu():
    """train.device=cpu where torch sees a GPU: gloo, CPU parameters, CPU inputs (the GPU is simulated)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    code = f"LLAMA = {LLAMA!r}\n" + CPU_ON_A_GPU_MACHINE
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]), OMP_NUM_THREADS="1")
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-3000:]
