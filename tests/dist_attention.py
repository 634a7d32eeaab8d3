"""Attention equality checks shared by tests/test_attention.py: in process at TP1, and at TP2 in one launch:

    torchrun --nproc_per_node 2 tests/dist_attention.py WORK_DIR

WORK_DIR holds tiny random HF models (``hf_llama``, ``hf_qwen2``, float32, written by the test). For each
family and each recompute setting (off, full, selective) the megatron-core model is built with the SDPA
core attention and with megatron-core's unfused one, the HF weights are loaded through the converter's
weight table, and compared with the ``transformers`` model (eager attention, an independent computation):

- ``unpacked``: a batch of two rows, full-vocabulary logits, per-token loss, and every parameter's gradient
  of the summed loss (the HF gradient cut to this rank's shard by the same table that loads the weights);
- ``packed``: several examples back to back in one row (THD, ``cu_seqlens``) through the SDPA attention,
  against each example run alone by ``transformers`` (logits and loss per token, gradients summed).

Each rank writes ``results_tp<T>_rank<R>.json``: check name -> relative error (max |ours - ref| / max |ref|).
"""

from __future__ import annotations

import json
import os
import sys
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F

SEQ = 24
BATCH = 2
PACK = [5, 9, 1, 7]  # example lengths in one packed row, a one-token example included
FAMILIES = ("llama", "qwen2")
RECOMPUTE = {
    "none": {},
    "full": {"recompute_granularity": "full", "recompute_method": "uniform", "recompute_num_layers": 1},
    "selective": {"recompute_granularity": "selective"},
}


def make_hf_models(work: Path) -> None:
    """Tiny random Llama (GQA, untied) and Qwen2 (GQA, QKV bias, tied); vocabulary 512 needs no padding."""
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    common = dict(vocab_size=512, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=128)
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(**common, tie_word_embeddings=False, rope_theta=500000.0, rms_norm_eps=1e-5)
                     ).save_pretrained(work / "hf_llama")
    qwen2 = Qwen2ForCausalLM(Qwen2Config(**common, tie_word_embeddings=True, rope_theta=1000000.0))
    with torch.no_grad():  # transformers initialises biases to zero: make them count
        for name, param in qwen2.named_parameters():
            if name.endswith("bias"):
                param.normal_(0, 0.5)
    qwen2.save_pretrained(work / "hf_qwen2")


def load_hf(work: Path, family: str):
    from transformers import AutoModelForCausalLM

    from megatron_tibetan.models import make_model_spec

    path = work / f"hf_{family}"
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32, attn_implementation="eager")
    return model.train(), make_model_spec(json.loads((path / "config.json").read_text()))


def build(spec: dict, hf_model, attention: str, **overrides):
    """This rank's GPTModel with ``attention`` ("sdpa" or "unfused") and the HF weights, in training mode."""
    from megatron_tibetan.convert.weights import load_hf_into_model
    from megatron_tibetan.models import gpt

    original = gpt.layer_spec
    gpt.layer_spec = partial(original, attention=attention)
    try:
        model = gpt.build_gpt_model(spec, **overrides)
    finally:
        gpt.layer_spec = original
    load_hf_into_model(model, dict(hf_model.state_dict()), spec, progress=False)
    return model.train()


def packed_params(lengths: list[int]):
    from megatron.core.packed_seq_params import PackedSeqParams

    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
    return PackedSeqParams(qkv_format="thd", cu_seqlens_q=cu, cu_seqlens_kv=cu,
                           max_seqlen_q=max(lengths), max_seqlen_kv=max(lengths))


def positions(ids: torch.Tensor, lengths: list[int] | None = None) -> torch.Tensor:
    if lengths is None:
        return torch.arange(ids.shape[1]).expand_as(ids)
    return torch.cat([torch.arange(n) for n in lengths]).unsqueeze(0)


def megatron_run(model, ids, labels, lengths=None, attention_mask=None):
    """(full-vocabulary logits [b, s, V], per-token loss [b, s]); the gradients of the summed loss are left
    in ``param.grad``. ``lengths``: ``ids`` is one packed row of examples of these lengths."""
    from megatron.core.tensor_parallel import gather_from_tensor_model_parallel_region

    packed = packed_params(lengths) if lengths else None
    pos = positions(ids, lengths)
    model.zero_grad(set_to_none=True)
    loss = model(ids, pos, attention_mask, labels=labels, packed_seq_params=packed)
    loss.sum().backward()
    with torch.no_grad():
        logits = model(ids, pos, attention_mask, packed_seq_params=packed)
    return gather_from_tensor_model_parallel_region(logits), loss.detach()


def hf_run(model, ids, labels):
    """transformers' (logits, per-token loss, {name: gradient of the summed loss})."""
    model.zero_grad(set_to_none=True)
    logits = model(ids).logits
    loss = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), reduction="none").view_as(labels)
    loss.sum().backward()
    return logits.detach(), loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def hf_run_each(model, ids, labels, lengths):
    """transformers on each example of a packed row alone: logits and losses concatenated, gradients summed."""
    logits, losses, grads = [], [], {}
    for chunk_ids, chunk_labels in zip(ids.split(lengths, dim=1), labels.split(lengths, dim=1)):
        lg, ls, gr = hf_run(model, chunk_ids, chunk_labels)
        logits.append(lg)
        losses.append(ls)
        for name, g in gr.items():
            grads[name] = grads[name] + g if name in grads else g
    return torch.cat(logits, dim=1), torch.cat(losses, dim=1), grads


def relative_error(ours: torch.Tensor, ref: torch.Tensor) -> float:
    return ((ours.float() - ref.float()).abs().max() / ref.float().abs().max().clamp_min(1e-30)).item()


def grad_errors(model, spec: dict, hf_grads: dict) -> dict[str, float]:
    """parameter -> relative error of its gradient against the HF gradient cut to this rank's shard."""
    from megatron.core import parallel_state

    from megatron_tibetan.convert.weights import context, hf_names_for, model_params

    ctx = context(spec)
    rank = parallel_state.get_tensor_model_parallel_rank()
    size = parallel_state.get_tensor_model_parallel_world_size()
    errors = {}
    for name, param, mapping, layer in model_params(model, spec):
        ref = mapping.shard([hf_grads[n] for n in hf_names_for(mapping, spec, layer)], ctx, param.shape, rank, size)
        errors[name] = relative_error(param.grad, ref)
    return errors


def inputs(vocab: int):
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, vocab, (BATCH, SEQ), generator=gen)
    labels = torch.randint(0, vocab, (BATCH, SEQ), generator=gen)
    return ids, labels


def check_case(work: Path, family: str, recompute: str) -> dict[str, float]:
    """Every comparison of one family and recompute setting: name -> relative error."""
    hf_model, spec = load_hf(work, family)
    vocab = spec["hf_config"]["vocab_size"]
    ids, labels = inputs(vocab)
    ref_logits, ref_loss, ref_grads = hf_run(hf_model, ids, labels)
    results = {}
    for attention in ("sdpa", "unfused"):
        model = build(spec, hf_model, attention, **RECOMPUTE[recompute])
        logits, loss = megatron_run(model, ids, labels)
        results[f"unpacked {attention} logits"] = relative_error(logits[..., :vocab], ref_logits)
        results[f"unpacked {attention} loss"] = relative_error(loss, ref_loss)
        results[f"unpacked {attention} grads"] = max(grad_errors(model, spec, ref_grads).values())

    row_ids, row_labels = ids[:1, : sum(PACK)], labels[:1, : sum(PACK)]
    ref_logits, ref_loss, ref_grads = hf_run_each(hf_model, row_ids, row_labels, PACK)
    model = build(spec, hf_model, "sdpa", **RECOMPUTE[recompute])
    logits, loss = megatron_run(model, row_ids, row_labels, PACK)
    results["packed sdpa logits"] = relative_error(logits[..., :vocab], ref_logits)
    results["packed sdpa loss"] = relative_error(loss, ref_loss)
    results["packed sdpa grads"] = max(grad_errors(model, spec, ref_grads).values())
    return results


def main() -> None:
    from megatron.core import parallel_state

    from megatron_tibetan.distributed import init_parallel

    work = Path(sys.argv[1])
    tp = int(os.environ["WORLD_SIZE"])
    init_parallel(tp, 1)
    rank = parallel_state.get_tensor_model_parallel_rank()
    results = {f"{family} recompute={recompute} {name}": error
               for family in FAMILIES for recompute in RECOMPUTE
               for name, error in check_case(work, family, recompute).items()}
    (work / f"results_tp{tp}_rank{rank}.json").write_text(json.dumps(results, indent=1))
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
