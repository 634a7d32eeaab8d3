"""Typed HF <-> Megatron parameter mappings; a family's weight table is a list of them (models/families/).

Names carry ``*`` for the (global, 0-based) layer index. Each mapping converts in both directions:

- ``to_megatron(hf_tensors, ctx)``: the HF tensors (in ``hf`` order) -> the *full* Megatron tensor
  (TP=1 layout); :meth:`Mapping.shard` then cuts this rank's TP slice.
- ``to_hf(full, ctx)``: the full Megatron tensor -> {hf name: tensor}.

A mapping may list several Megatron names (``megatron`` is a tuple): the same HF tensor lives under
``input_layernorm.weight`` in the local layer spec and under ``linear_qkv.layer_norm_weight`` in the
Transformer Engine spec (which fuses the norm into the next linear); the converter uses the one the
model has.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Context:
    """What transforms need to know about the model."""

    num_heads: int
    num_query_groups: int
    head_dim: int
    vocab_size: int  # rows HF keeps
    padded_vocab_size: int  # rows Megatron keeps


def _names(names: str | tuple[str, ...]) -> tuple[str, ...]:
    return (names,) if isinstance(names, str) else tuple(names)


def split_dim(full: torch.Size, local: torch.Size, size: int, name: str) -> int | None:
    """The tensor-parallel axis: where ``full`` is ``size`` x ``local``; None when they are equal."""
    differ = [d for d in range(len(full)) if full[d] != local[d]] if len(full) == len(local) else [-1]
    if not differ:
        return None
    if len(differ) != 1 or differ[0] < 0 or full[differ[0]] != local[differ[0]] * size:
        raise ValueError(f"{name}: HF tensors give shape {tuple(full)}, this rank's parameter is {tuple(local)} "
                         f"(tensor parallel size {size})")
    return differ[0]


def fill(name: str, layer: int | None) -> str:
    return name if layer is None else name.replace("*", str(layer))


@dataclass(frozen=True)
class Mapping:
    """One-to-one copy (norms, projections): the tensor is the same in both formats."""

    megatron: str | tuple[str, ...]
    hf: str | tuple[str, ...]

    @property
    def megatron_names(self) -> tuple[str, ...]:
        return _names(self.megatron)

    @property
    def hf_names(self) -> tuple[str, ...]:
        return _names(self.hf)

    @property
    def per_layer(self) -> bool:
        return "*" in self.megatron_names[0]

    def to_megatron(self, hf: list[torch.Tensor], ctx: Context) -> torch.Tensor:
        return hf[0]

    def to_hf(self, full: torch.Tensor, ctx: Context, layer: int | None) -> dict[str, torch.Tensor]:
        return {fill(self.hf_names[0], layer): full}

    def shard(self, hf: list[torch.Tensor], ctx: Context, shape: torch.Size, rank: int, size: int) -> torch.Tensor:
        """This TP rank's slice of the Megatron tensor, for a parameter of ``shape`` (the split axis is the
        one where the full tensor is ``size`` times larger; none: replicated)."""
        full = self.to_megatron(hf, ctx)
        dim = split_dim(full.shape, shape, size, self.megatron_names[0])
        return full if dim is None else full.chunk(size, dim=dim)[rank]


@dataclass(frozen=True)
class QKV(Mapping):
    """HF q, k, v (weights or biases) <-> Megatron's fused linear_qkv, interleaved per query group:
    [q heads of group 0, k of group 0, v of group 0, q heads of group 1, ...], so a TP split along the
    first axis keeps whole groups together."""

    def _grouped(self, t: torch.Tensor, heads: int, ctx: Context) -> torch.Tensor:
        # [heads * head_dim, ...] -> [groups, heads_per_group * head_dim, ...]
        return t.reshape(ctx.num_query_groups, (heads // ctx.num_query_groups) * ctx.head_dim, *t.shape[1:])

    def to_megatron(self, hf: list[torch.Tensor], ctx: Context) -> torch.Tensor:
        q, k, v = hf
        parts = [self._grouped(q, ctx.num_heads, ctx), self._grouped(k, ctx.num_query_groups, ctx),
                 self._grouped(v, ctx.num_query_groups, ctx)]
        return torch.cat(parts, dim=1).reshape(-1, *q.shape[1:])

    def to_hf(self, full: torch.Tensor, ctx: Context, layer: int | None) -> dict[str, torch.Tensor]:
        per_group = ctx.num_heads // ctx.num_query_groups
        grouped = full.reshape(ctx.num_query_groups, (per_group + 2) * ctx.head_dim, *full.shape[1:])
        q, k, v = grouped.split([per_group * ctx.head_dim, ctx.head_dim, ctx.head_dim], dim=1)
        tensors = [t.reshape(-1, *full.shape[1:]).contiguous() for t in (q, k, v)]
        return {fill(name, layer): t for name, t in zip(self.hf_names, tensors)}


@dataclass(frozen=True)
class GatedMLP(Mapping):
    """HF gate_proj, up_proj <-> Megatron's linear_fc1 = [gate; up]. Under TP each rank holds
    [its gate slice; its up slice], so the shard is cut per half."""

    def to_megatron(self, hf: list[torch.Tensor], ctx: Context) -> torch.Tensor:
        return torch.cat(hf, dim=0)

    def to_hf(self, full: torch.Tensor, ctx: Context, layer: int | None) -> dict[str, torch.Tensor]:
        gate, up = full.chunk(2, dim=0)
        return {fill(self.hf_names[0], layer): gate.contiguous(), fill(self.hf_names[1], layer): up.contiguous()}

    def shard(self, hf, ctx, shape, rank, size):
        dim = split_dim(torch.Size([hf[0].shape[0] * 2, *hf[0].shape[1:]]), shape, size, self.megatron_names[0])
        if dim is None:
            return self.to_megatron(hf, ctx)
        if dim != 0:
            raise ValueError(f"{self.megatron_names[0]}: expected a column-parallel (dim 0) split, got dim {dim}")
        return torch.cat([t.chunk(size, dim=0)[rank] for t in hf], dim=0)


@dataclass(frozen=True)
class VocabRows(Mapping):
    """Embedding / output layer: HF keeps ``vocab_size`` rows, Megatron ``padded_vocab_size`` (zero rows
    appended; they are never looked up, and export drops them). ``tied`` names the HF tensor to read
    when the model ties its output layer to the input embedding."""

    tied: str | None = None

    def to_megatron(self, hf: list[torch.Tensor], ctx: Context) -> torch.Tensor:
        rows = hf[0]
        if rows.shape[0] != ctx.vocab_size:
            raise ValueError(f"{self.hf_names[0]} has {rows.shape[0]} rows, config vocab_size is {ctx.vocab_size}")
        pad = ctx.padded_vocab_size - ctx.vocab_size
        return torch.cat([rows, rows.new_zeros(pad, *rows.shape[1:])]) if pad else rows

    def to_hf(self, full: torch.Tensor, ctx: Context, layer: int | None) -> dict[str, torch.Tensor]:
        return {self.hf_names[0]: full[: ctx.vocab_size].contiguous()}
