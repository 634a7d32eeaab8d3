"""Fill this rank's GPTModel from HF tensors, or read HF tensors out of a (TP=1, PP=1) GPTModel, by the table."""

from __future__ import annotations

import re
from collections.abc import Iterator

import torch

from megatron_tibetan.models.families import get_family
from megatron_tibetan.models.families.base import head_dim, query_groups
from megatron_tibetan.models.weight_mapping import Context, Mapping, VocabRows, fill

_LAYER = re.compile(r"^decoder\.layers\.(\d+)\.")


class MissingTensorsError(KeyError):
    """HF tensors the table needs that the checkpoint does not have (listed by name)."""


def context(spec: dict) -> Context:
    hf = spec["hf_config"]
    return Context(
        num_heads=hf["num_attention_heads"],
        num_query_groups=query_groups(hf),
        head_dim=head_dim(hf),
        vocab_size=hf["vocab_size"],
        padded_vocab_size=spec["padded_vocab_size"],
    )


def tied(spec: dict) -> bool:
    return bool(spec["hf_config"].get("tie_word_embeddings", False))


def hf_names_for(mapping: Mapping, spec: dict, layer: int | None) -> list[str]:
    """The HF tensors ``mapping`` reads (the input embedding for a tied output layer)."""
    if isinstance(mapping, VocabRows) and mapping.tied and tied(spec):
        return [mapping.tied]
    return [fill(name, layer) for name in mapping.hf_names]


def expected_hf_names(spec: dict) -> set[str]:
    """Every HF tensor name of the whole model, by the family's table."""
    names = set()
    for mapping in get_family(spec["family"]).weights:
        layers = range(spec["hf_config"]["num_hidden_layers"]) if mapping.per_layer else [None]
        for layer in layers:
            names.update(hf_names_for(mapping, spec, layer))
    return names


def check_hf_names(available: set[str], spec: dict, where: str) -> list[str]:
    """Raise for missing tensors (all listed); return the HF tensors the table does not use (ignored
    buffers, a duplicate lm_head of a tied model), which the caller reports. Unknown tensors are errors."""
    expected = expected_hf_names(spec)
    missing = sorted(expected - available)
    if missing:
        raise MissingTensorsError(f"{where}: {len(missing)} tensors missing: {', '.join(missing)}")
    extra = sorted(available - expected)
    family = get_family(spec["family"])
    output = family.output_layer.hf_names[0]
    skippable = [n for n in extra if n.endswith(family.ignored_hf) or (n == output and tied(spec))]
    unknown = sorted(set(extra) - set(skippable))
    if unknown:
        raise ValueError(f"{where}: {len(unknown)} tensors the {spec['family']} table does not map: {', '.join(unknown)}")
    return skippable


def _lookup(family: str) -> dict[str, Mapping]:
    return {name: m for m in get_family(family).weights for name in m.megatron_names}


def model_params(model, spec: dict) -> Iterator[tuple[str, torch.nn.Parameter, Mapping, int | None]]:
    """(local name, parameter, mapping, global layer or None) for every parameter of this rank's model."""
    lookup = _lookup(spec["family"])
    unmapped = []
    for name, param in model.named_parameters():
        match = _LAYER.match(name)
        layer = None
        pattern = name
        if match:
            local = int(match.group(1))
            layer = model.decoder.layers[local].layer_number - 1  # 1-based global number
            pattern = _LAYER.sub("decoder.layers.*.", name)
        if pattern not in lookup:
            unmapped.append(name)
            continue
        yield name, param, lookup[pattern], layer
    if unmapped:
        raise ValueError(f"model parameters with no entry in the {spec['family']} table: {', '.join(unmapped)}")


@torch.no_grad()
def load_hf_into_model(model, source, spec: dict, progress: bool = True) -> None:
    """Copy ``source``'s tensors (an HFSource) into this rank's model shard, exactly (dtype cast only)."""
    from megatron.core import parallel_state
    from tqdm import tqdm

    ctx = context(spec)
    rank = parallel_state.get_tensor_model_parallel_rank()
    size = parallel_state.get_tensor_model_parallel_world_size()
    params = list(model_params(model, spec))
    show = progress and torch.distributed.get_rank() == 0
    for name, param, mapping, layer in tqdm(params, desc="import", unit=" tensors", disable=not show):
        hf = [source.get(n) for n in hf_names_for(mapping, spec, layer)]
        shard = mapping.shard(hf, ctx, param.shape, rank, size)
        if shard.shape != param.shape:
            raise ValueError(f"{name}: HF {hf_names_for(mapping, spec, layer)} give shape {tuple(shard.shape)}, "
                             f"model expects {tuple(param.shape)} (TP rank {rank}/{size})")
        param.copy_(shard)


@torch.no_grad()
def hf_tensors_from_model(model, spec: dict) -> Iterator[tuple[str, torch.Tensor]]:
    """(HF name, tensor) for every HF tensor, from a full (TP=1, PP=1) model; tied models yield no lm_head."""
    from megatron.core import parallel_state

    if parallel_state.get_tensor_model_parallel_world_size() != 1 or parallel_state.get_pipeline_model_parallel_world_size() != 1:
        raise RuntimeError("export reads a TP=1, PP=1 model (dist_checkpointing reshards any checkpoint to it)")
    ctx = context(spec)
    for _, param, mapping, layer in model_params(model, spec):
        yield from mapping.to_hf(param.detach(), ctx, layer).items()
