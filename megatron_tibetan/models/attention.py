"""Core attention for megatron-core's local layer spec on PyTorch's ``scaled_dot_product_attention``.

megatron-core's local spec computes attention unfused (``DotProductAttention``: explicit scores, softmax, a
second matmul, K/V repeated for GQA), and refuses packed sequences. :class:`SDPAttention` replaces it in the
spec (``self_attention.submodules.core_attention``) with the same constructor and forward signature:

- causal attention through SDPA's ``is_causal`` (PyTorch's fused kernels: flash attention on CPU and GPU);
- GQA with ``enable_gqa``: K/V are not repeated where PyTorch's kernel supports it (its math fallback,
  taken with dropout, repeats them internally);
- attention dropout drawn under megatron-core's tensor-parallel RNG tracker, as ``DotProductAttention``
  does, so TP ranks and activation recompute replay the same masks;
- the heads of this tensor-parallel rank (heads and query groups divided by the TP size);
- an explicit boolean ``attention_mask`` in megatron's convention (True = masked out, broadcastable to
  ``[b, heads, sq, sk]``): it replaces the causal mask, as in megatron-core's unfused path, except for
  ``padding_causal``, where both apply;
- packed sequences (``PackedSeqParams(qkv_format="thd", cu_seqlens_q=cu, cu_seqlens_kv=cu)``): several
  examples back to back in one row; megatron-core's ``Attention`` squeezes the batch dimension and applies
  RoPE per example, and each example attends causally to itself only (a block-diagonal causal mask, run
  as one causal SDPA call per example so no ``t x t`` mask is built).

``local_layer_spec(qk_layernorm, attention="sdpa" | "unfused")`` is megatron-core's local GPT layer spec
(RMSNorm) with this module, or unchanged (the unfused reference path).
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F

from megatron.core import tensor_parallel
from megatron.core.packed_seq_params import PackedSeqParams
from megatron.core.process_groups_config import ProcessGroupCollection
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.transformer_config import TransformerConfig
from megatron.core.transformer.utils import is_layer_window_attention
from megatron.core.utils import divide

ATTENTION_IMPLEMENTATIONS = ("sdpa", "unfused")


class SDPAttention(MegatronModule):
    """Drop-in ``core_attention`` for the local spec: ``scaled_dot_product_attention`` over this rank's heads.

    Inputs ``query [sq, b, heads, d]``, ``key``/``value [sk, b, groups, d]`` (or ``[t, heads|groups, d]``
    for packed sequences); output ``[sq, b, heads * d]`` (``[t, heads * d]`` packed).
    """

    def __init__(
        self,
        config: TransformerConfig,
        layer_number: int,
        attn_mask_type: AttnMaskType,
        attention_type: str,
        attention_dropout: Optional[float] = None,
        softmax_scale: Optional[float] = None,
        cp_comm_type: Optional[str] = None,
        pg_collection: Optional[ProcessGroupCollection] = None,
    ):
        super().__init__(config=config)
        if config.context_parallel_size != 1:
            raise ValueError("SDPAttention: context parallelism needs the Transformer Engine spec")
        if config.softmax_type != "vanilla":
            raise ValueError(f"SDPAttention: softmax_type={config.softmax_type!r} is not supported; "
                             "use the unfused path (attention='unfused')")
        if is_layer_window_attention(config.window_size, config.window_attn_skip_freq, layer_number):
            raise ValueError("SDPAttention: sliding-window attention is not supported; use attention='unfused'")
        if pg_collection is None:
            pg_collection = ProcessGroupCollection.use_mpu_process_groups(required_pgs=["tp"])
        tp = pg_collection.tp.size()
        self.layer_number = max(1, layer_number)
        self.attn_mask_type = attn_mask_type
        self.attention_type = attention_type
        self.num_heads = divide(config.num_attention_heads, tp)
        self.num_groups = divide(config.num_query_groups, tp)
        self.head_dim = divide(config.kv_channels * config.num_attention_heads, config.num_attention_heads)
        # megatron's query-key layer scaling divides the scale by the layer number and multiplies the
        # scores back before the softmax: the same product, so only the plain scale is needed here
        self.softmax_scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(self.head_dim)
        self.dropout_p = config.attention_dropout if attention_dropout is None else attention_dropout

    def _sdpa(self, q, k, v, mask, is_causal: bool):
        """SDPA on ``[..., heads, s, d]`` tensors; dropout under the TP RNG tracker (as DotProductAttention)."""
        p = self.dropout_p if self.training else 0.0
        kwargs = dict(attn_mask=mask, is_causal=is_causal, scale=self.softmax_scale,
                      enable_gqa=self.num_heads != self.num_groups)
        if p == 0.0:
            return F.scaled_dot_product_attention(q, k, v, **kwargs)
        if self.config.sequence_parallel:
            return F.scaled_dot_product_attention(q, k, v, dropout_p=p, **kwargs)
        with tensor_parallel.get_cuda_rng_tracker().fork():
            return F.scaled_dot_product_attention(q, k, v, dropout_p=p, **kwargs)

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: Optional[torch.Tensor],
        attn_mask_type: Optional[AttnMaskType] = None,
        attention_bias: Optional[torch.Tensor] = None,
        packed_seq_params: Optional[PackedSeqParams] = None,
    ) -> torch.Tensor:
        if attention_bias is not None:
            raise ValueError("SDPAttention: attention_bias is not supported (nor by megatron-core's DotProductAttention)")
        mask_type = attn_mask_type if attn_mask_type is not None else self.attn_mask_type
        causal = mask_type in (AttnMaskType.causal, AttnMaskType.padding_causal)
        if packed_seq_params is not None:
            if attention_mask is not None:
                raise ValueError("SDPAttention: packed sequences take their mask from cu_seqlens; "
                                 "pass attention_mask=None")
            return self._packed(query, key, value, packed_seq_params, causal)

        sq, b, sk = query.size(0), query.size(1), key.size(0)
        mask = None
        if attention_mask is not None:
            if attention_mask.dtype != torch.bool:
                raise TypeError(f"SDPAttention: attention_mask must be boolean (True = masked out), "
                                f"got {attention_mask.dtype}")
            mask = ~attention_mask  # SDPA: True = may attend
            if mask_type == AttnMaskType.padding_causal:
                mask = mask & torch.ones(sq, sk, dtype=torch.bool, device=mask.device).tril()
            causal = False  # the explicit mask says everything, as in megatron-core's unfused path
        elif causal and sq > 1 and sq != sk:
            raise ValueError(f"SDPAttention: a causal mask needs as many queries as keys ({sq} != {sk})")
        # [s, b, h, d] -> [b, h, s, d]: views, no copy
        out = self._sdpa(query.permute(1, 2, 0, 3), key.permute(1, 2, 0, 3), value.permute(1, 2, 0, 3),
                         mask, causal and sq > 1)
        return out.permute(2, 0, 1, 3).reshape(sq, b, self.num_heads * self.head_dim)

    def _packed(self, query, key, value, params: PackedSeqParams, causal: bool) -> torch.Tensor:
        """``[t, h, d]`` holding several examples back to back: each attends to itself only."""
        if params.qkv_format != "thd":
            raise ValueError(f"SDPAttention: packed sequences must use qkv_format='thd', got {params.qkv_format!r}")
        cu_q, cu_kv = params.cu_seqlens_q, params.cu_seqlens_kv
        if cu_q is None or cu_kv is None:
            raise ValueError("SDPAttention: packed sequences need cu_seqlens_q and cu_seqlens_kv")
        for name in ("cu_seqlens_q_padded", "cu_seqlens_kv_padded"):
            padded = getattr(params, name)
            if padded is not None and not torch.equal(padded, cu_q):
                raise ValueError(f"SDPAttention: {name} different from cu_seqlens_q (padding between packed "
                                 "examples, for context parallelism) needs the Transformer Engine spec")
        if query.dim() != 3:
            raise ValueError(f"SDPAttention: packed query must be [t, heads, d], got shape {tuple(query.shape)}")
        bounds = cu_q.tolist()
        if not torch.equal(cu_q, cu_kv):
            raise ValueError("SDPAttention: packed self-attention needs cu_seqlens_q == cu_seqlens_kv")
        t = query.size(0)
        if bounds[0] != 0 or bounds[-1] != t or any(a > b for a, b in zip(bounds, bounds[1:])):
            raise ValueError(f"SDPAttention: cu_seqlens {bounds} must rise from 0 to the {t} packed tokens")
        longest = max(b - a for a, b in zip(bounds, bounds[1:]))
        if (params.max_seqlen_q, params.max_seqlen_kv) != (longest, longest):
            # megatron-core's RoPE builds a table of max_seqlen positions; one as long as the whole pack
            # makes positions run on across examples instead of restarting, a shorter one breaks RoPE
            raise ValueError(f"SDPAttention: max_seqlen_q and max_seqlen_kv must be the longest packed example "
                             f"({longest} tokens), got {params.max_seqlen_q} and {params.max_seqlen_kv}")
        outputs = []
        for start, end in zip(bounds, bounds[1:]):
            if end == start:
                continue
            # [len, h, d] -> [1, h, len, d]: with a batch dimension, as PyTorch's fused CPU kernel wants
            # (3-d inputs fall back to the unfused math path, 2-3x slower)
            q, k, v = (x[start:end].transpose(0, 1).unsqueeze(0) for x in (query, key, value))
            outputs.append(self._sdpa(q, k, v, None, causal and end - start > 1)[0].transpose(0, 1))
        out = outputs[0] if len(outputs) == 1 else torch.cat(outputs) if outputs else query.new_empty(query.shape)
        return out.reshape(t, self.num_heads * self.head_dim)


def local_layer_spec(qk_layernorm: bool = False, attention: str = "sdpa"):
    """megatron-core's local GPT layer spec (RMSNorm) with :class:`SDPAttention` as core attention
    (``attention="sdpa"``), or megatron-core's own unfused ``DotProductAttention`` (``"unfused"``)."""
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec

    if attention not in ATTENTION_IMPLEMENTATIONS:
        raise ValueError(f"attention={attention!r}: expected one of {', '.join(ATTENTION_IMPLEMENTATIONS)}")
    spec = get_gpt_layer_local_spec(normalization="RMSNorm", qk_layernorm=qk_layernorm)
    if attention == "sdpa":
        spec.submodules.self_attention.submodules.core_attention = SDPAttention
    return spec
