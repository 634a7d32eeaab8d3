"""SDPA core attention of the local layer spec (megatron_tibetan/models/attention.py) against megatron-core's
unfused attention and ``transformers`` (eager attention), float32 on CPU: logits, per-token loss and every
gradient, unpacked and packed (THD, cu_seqlens), recompute off/full/selective, at TP1 in process and at TP2
in one torchrun launch (tests/dist_attention.py); explicit masks, dropout under recompute, GQA without
repeated K/V, and the errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
import dist_attention as cases  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TOLERANCE = 1e-5  # relative (max |ours - ref| / max |ref|); float32 reorderings give about 5e-7 here


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("attention")
    cases.make_hf_models(path)
    return path


@pytest.fixture(scope="module")
def parallel():
    from megatron_tibetan.distributed import init_parallel

    init_parallel(1, 1)


def assert_all_close(results: dict[str, float], what: str) -> None:
    bad = {name: error for name, error in results.items() if not error <= TOLERANCE}
    assert not bad, f"{what}: relative errors above {TOLERANCE}: {bad}"


@pytest.mark.parametrize("recompute", list(cases.RECOMPUTE))
@pytest.mark.parametrize("family", cases.FAMILIES)
def test_tp1_equals_unfused_and_transformers(work, parallel, family, recompute):
    results = cases.check_case(work, family, recompute)
    assert_all_close(results, f"{family} TP1 recompute={recompute}")


def test_tp2_equals_transformers(work):
    """One launch of 2 ranks (gloo): every family, recompute setting, unpacked and packed, both ranks' shards."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                          str(ROOT / "tests/dist_attention.py"), str(work)], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-4000:]
    for rank in range(2):
        results = json.loads((work / f"results_tp2_rank{rank}.json").read_text())
        expected = len(cases.FAMILIES) * len(cases.RECOMPUTE) * 9
        assert len(results) == expected, f"rank {rank}: {len(results)} checks, expected {expected}"
        assert_all_close(results, f"TP2 rank {rank}")


def test_recompute_reruns_attention(work, parallel):
    """Recompute is really on: the core attention runs again in the backward pass (full and selective)."""
    from megatron_tibetan.models.attention import SDPAttention

    hf_model, spec = cases.load_hf(work, "llama")
    ids, labels = cases.inputs(spec["hf_config"]["vocab_size"])
    layers = spec["hf_config"]["num_hidden_layers"]
    for recompute, calls in (("none", layers), ("full", 2 * layers), ("selective", 2 * layers)):
        model = cases.build(spec, hf_model, "sdpa", **cases.RECOMPUTE[recompute])
        seen = []
        for module in model.modules():
            if isinstance(module, SDPAttention):
                module.register_forward_hook(lambda *_: seen.append(1))
        model(ids, cases.positions(ids), None, labels=labels).sum().backward()
        assert len(seen) == calls, f"recompute={recompute}: core attention ran {len(seen)} times, expected {calls}"


def test_packed_row_equals_examples_alone(work, parallel):
    """Megatron against itself: a packed row gives each example's own logits; without cu_seqlens it would not."""
    hf_model, spec = cases.load_hf(work, "qwen2")
    ids, labels = cases.inputs(spec["hf_config"]["vocab_size"])
    row, row_labels = ids[:1, : sum(cases.PACK)], labels[:1, : sum(cases.PACK)]
    model = cases.build(spec, hf_model, "sdpa")
    packed_logits, packed_loss = cases.megatron_run(model, row, row_labels, cases.PACK)
    packed_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    alone = [cases.megatron_run(model, i, l) for i, l in zip(row.split(cases.PACK, 1), row_labels.split(cases.PACK, 1))]
    assert cases.relative_error(packed_logits, torch.cat([a[0] for a in alone], 1)) <= TOLERANCE
    assert cases.relative_error(packed_loss, torch.cat([a[1] for a in alone], 1)) <= TOLERANCE
    model.zero_grad(set_to_none=True)
    for i, l in zip(row.split(cases.PACK, 1), row_labels.split(cases.PACK, 1)):  # gradients accumulate
        model(i, cases.positions(i), None, labels=l).sum().backward()
    for name, param in model.named_parameters():
        assert cases.relative_error(packed_grads[name], param.grad) <= TOLERANCE, name
    # the same row as one causal sequence: later examples see earlier ones, so the check above can fail
    with torch.no_grad():
        causal = model(row, cases.positions(row), None)
    assert cases.relative_error(causal[:, cases.PACK[0]:], packed_logits[:, cases.PACK[0]:]) > 1e-2


def test_explicit_mask_equals_unfused_and_packing(work, parallel):
    """A boolean mask (True = masked out, megatron's convention) is honoured like megatron-core's unfused path
    honours it; a block-diagonal causal mask over the packed row gives the packed (THD) result."""
    hf_model, spec = cases.load_hf(work, "llama")
    ids, labels = cases.inputs(spec["hf_config"]["vocab_size"])
    causal = torch.ones(cases.SEQ, cases.SEQ, dtype=torch.bool).tril()
    block = torch.block_diag(*[torch.ones(n, n, dtype=torch.bool) for n in (10, 14)])
    allowed = (causal & block).expand(cases.BATCH, 1, -1, -1).clone()
    allowed[1, 0, :, 3] = False  # the second row may not attend to its fourth token (a padding-style hole)
    allowed[1, 0, 3, 3] = True
    mask = ~allowed
    runs, grads = {}, {}
    for attention in ("sdpa", "unfused"):
        model = cases.build(spec, hf_model, attention)
        runs[attention] = cases.megatron_run(model, ids, labels, attention_mask=mask)
        grads[attention] = {n: p.grad.clone() for n, p in model.named_parameters()}
    assert cases.relative_error(runs["sdpa"][0], runs["unfused"][0]) <= TOLERANCE
    assert cases.relative_error(runs["sdpa"][1], runs["unfused"][1]) <= TOLERANCE
    for name, grad in grads["sdpa"].items():
        assert cases.relative_error(grad, grads["unfused"][name]) <= TOLERANCE, name
    # row 0 under the block-diagonal mask is two examples of 10 and 14 tokens: the packed (THD) result
    packed_logits, _ = cases.megatron_run(cases.build(spec, hf_model, "sdpa"), ids[:1], labels[:1], [10, 14])
    assert cases.relative_error(runs["sdpa"][0][:1], packed_logits) <= TOLERANCE
    # the mask matters (without it, later tokens see the first example)
    plain, _ = cases.megatron_run(cases.build(spec, hf_model, "sdpa"), ids, labels)
    assert cases.relative_error(plain[:1, 10:], runs["sdpa"][0][:1, 10:]) > 1e-2


@pytest.mark.parametrize("recompute", ["full", "selective"])
def test_dropout_replayed_by_recompute(work, parallel, recompute):
    """Attention dropout is drawn under megatron-core's RNG tracker: recompute replays the same masks, so
    loss and gradients are bit-identical with recompute on and off; dropout is off in eval mode."""
    from megatron.core.tensor_parallel import model_parallel_cuda_manual_seed

    hf_model, spec = cases.load_hf(work, "llama")
    ids, labels = cases.inputs(spec["hf_config"]["vocab_size"])

    def run(**overrides):
        model = cases.build(spec, hf_model, "sdpa", attention_dropout=0.3, **overrides)
        torch.manual_seed(5)
        model_parallel_cuda_manual_seed(5)
        loss = model(ids, cases.positions(ids), None, labels=labels)
        loss.sum().backward()
        return model, loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}

    model, loss, grads = run()
    _, loss_recomputed, grads_recomputed = run(**cases.RECOMPUTE[recompute])
    assert torch.equal(loss, loss_recomputed)
    for name, grad in grads.items():
        assert torch.equal(grad, grads_recomputed[name]), name
    ref_logits, ref_loss, _ = cases.hf_run(hf_model, ids, labels)
    assert cases.relative_error(loss, ref_loss) > 1e-3  # dropout was applied
    with torch.no_grad():
        eval_loss = model.eval()(ids, cases.positions(ids), None, labels=labels)
    assert cases.relative_error(eval_loss, ref_loss) <= TOLERANCE


def test_dropout_draws_from_the_tensor_parallel_stream(parallel):
    """The masks come from the tracker's model-parallel generator (distinct per TP rank), as in
    megatron-core's DotProductAttention, not from the default generator."""
    from megatron.core.tensor_parallel import get_cuda_rng_tracker
    from megatron.core.transformer.enums import AttnMaskType

    from megatron_tibetan.models import make_model_spec
    from megatron_tibetan.models.attention import SDPAttention
    from megatron_tibetan.models.gpt import transformer_config

    hf = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 1,
          "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 128, "rope_theta": 10000.0}
    attention = SDPAttention(transformer_config(make_model_spec(hf), attention_dropout=0.5), 1, AttnMaskType.causal, "self")
    q, k = torch.randn(8, 1, 4, 16), torch.randn(8, 1, 2, 16)
    default, tracked = torch.get_rng_state(), get_cuda_rng_tracker().get_states()
    out = attention(q, k, k, None)
    assert torch.equal(torch.get_rng_state(), default)
    assert any(not torch.equal(state, tracked[name]) for name, state in get_cuda_rng_tracker().get_states().items())
    assert not torch.allclose(out, attention.eval()(q, k, k, None))


def test_gqa_uses_fused_kernel_without_repeating_kv(parallel):
    """With GQA (4 heads, 2 groups) the forward and backward run PyTorch's flash kernel and never
    repeat_interleave K/V (megatron-core's unfused path does)."""
    from megatron.core.transformer.enums import AttnMaskType
    from torch.profiler import profile

    from megatron_tibetan.models import make_model_spec
    from megatron_tibetan.models.attention import SDPAttention
    from megatron_tibetan.models.gpt import transformer_config

    hf = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 1,
          "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 128, "rope_theta": 10000.0}
    attention = SDPAttention(transformer_config(make_model_spec(hf)), 1, AttnMaskType.causal, "self")
    q = torch.randn(16, 2, 4, 16, requires_grad=True)
    k, v = (torch.randn(16, 2, 2, 16, requires_grad=True) for _ in range(2))
    with profile() as prof:
        out = attention(q, k, v, None)
        out.sum().backward()
    ops = {event.key for event in prof.key_averages()}
    assert out.shape == (16, 2, 64)
    assert any("flash_attention" in op for op in ops), sorted(ops)
    assert not any("repeat_interleave" in op for op in ops), sorted(ops)
    # and the result is attention over the repeated groups, computed by hand
    qh, kh, vh = q.permute(1, 2, 0, 3), k.repeat_interleave(2, 2).permute(1, 2, 0, 3), v.repeat_interleave(2, 2).permute(1, 2, 0, 3)
    scores = (qh @ kh.transpose(-1, -2)) / 4.0
    scores = scores.masked_fill(torch.ones(16, 16, dtype=torch.bool).triu(1), float("-inf"))
    ref = (scores.softmax(-1) @ vh).permute(2, 0, 1, 3).reshape(16, 2, 64)
    assert cases.relative_error(out.detach(), ref.detach()) <= TOLERANCE


def test_spec_and_errors(parallel):
    from megatron.core.packed_seq_params import PackedSeqParams
    from megatron.core.transformer.dot_product_attention import DotProductAttention
    from megatron.core.transformer.enums import AttnMaskType
    from megatron.core.transformer.identity_op import IdentityOp

    from megatron_tibetan.models import layer_spec, make_model_spec
    from megatron_tibetan.models.attention import SDPAttention, local_layer_spec
    from megatron_tibetan.models.gpt import transformer_config

    def core(spec):
        return spec.submodules.self_attention.submodules.core_attention

    assert core(layer_spec()) is SDPAttention  # the default local spec
    assert core(local_layer_spec(attention="unfused")) is DotProductAttention
    qk = local_layer_spec(qk_layernorm=True).submodules.self_attention.submodules
    assert qk.core_attention is SDPAttention and qk.q_layernorm is not IdentityOp and qk.k_layernorm is not IdentityOp
    with pytest.raises(ValueError, match="attention='flash'"):
        local_layer_spec(attention="flash")

    hf = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 1,
          "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 128, "rope_theta": 10000.0}
    attention = SDPAttention(transformer_config(make_model_spec(hf)), 1, AttnMaskType.causal, "self")
    q, k = torch.randn(6, 4, 16), torch.randn(6, 2, 16)
    cu = torch.tensor([0, 2, 6], dtype=torch.int32)

    def packed(**kwargs):
        return PackedSeqParams(**{"qkv_format": "thd", "cu_seqlens_q": cu, "cu_seqlens_kv": cu,
                                  "max_seqlen_q": 4, "max_seqlen_kv": 4, **kwargs})

    assert attention(q, k, k, None, packed_seq_params=packed()).shape == (6, 64)
    with pytest.raises(ValueError, match="attention_mask=None"):
        attention(q, k, k, torch.zeros(6, 6, dtype=torch.bool), packed_seq_params=packed())
    with pytest.raises(ValueError, match="cu_seqlens_q_padded"):
        attention(q, k, k, None, packed_seq_params=packed(cu_seqlens_q_padded=torch.tensor([0, 4, 8], dtype=torch.int32)))
    with pytest.raises(ValueError, match="must rise from 0 to the 6 packed tokens"):
        bad = torch.tensor([0, 2, 5], dtype=torch.int32)
        attention(q, k, k, None, packed_seq_params=packed(cu_seqlens_q=bad, cu_seqlens_kv=bad))
    with pytest.raises(ValueError, match="longest packed example"):  # a RoPE table as long as the pack
        attention(q, k, k, None, packed_seq_params=packed(max_seqlen_q=6, max_seqlen_kv=6))
    with pytest.raises(ValueError, match="qkv_format='thd'"):
        attention(q, k, k, None, packed_seq_params=packed(qkv_format="sbhd"))
    with pytest.raises(TypeError, match="boolean"):
        attention(q.unsqueeze(1), k.unsqueeze(1), k.unsqueeze(1), torch.zeros(1, 1, 6, 6))
    with pytest.raises(ValueError, match="attention_bias"):
        attention(q.unsqueeze(1), k.unsqueeze(1), k.unsqueeze(1), None, attention_bias=torch.zeros(1))


def test_bfloat16_close_to_unfused(work, parallel):
    """bf16 weights and activations (the GPU recipe): SDPA and the unfused path (softmax in fp32) agree to
    bf16 precision, for unpacked and packed rows."""
    hf_model, spec = cases.load_hf(work, "qwen2")
    ids, labels = cases.inputs(spec["hf_config"]["vocab_size"])
    bf16 = dict(bf16=True, params_dtype=torch.bfloat16, pipeline_dtype=torch.bfloat16)
    runs = {a: cases.megatron_run(cases.build(spec, hf_model, a, **bf16), ids, labels) for a in ("sdpa", "unfused")}
    assert runs["sdpa"][0].dtype == torch.bfloat16
    assert cases.relative_error(runs["sdpa"][0], runs["unfused"][0]) <= 3e-2
    assert cases.relative_error(runs["sdpa"][1], runs["unfused"][1]) <= 3e-2
    row, row_labels = ids[:1, : sum(cases.PACK)], labels[:1, : sum(cases.PACK)]
    packed, _ = cases.megatron_run(cases.build(spec, hf_model, "sdpa", **bf16), row, row_labels, cases.PACK)
    ref_logits, _, _ = cases.hf_run_each(hf_model, row, row_labels, cases.PACK)
    assert cases.relative_error(packed[..., : ref_logits.shape[-1]], ref_logits) <= 3e-2
