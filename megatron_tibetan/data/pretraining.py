"""Continual-pretraining data: megatron-core's BlendedMegatronDatasetBuilder + GPTDataset over indexed datasets.

Index building, caching (``<cache>/*.npy`` keyed by a hash of the config), shuffling and blending are
megatron-core's own, so a data path behaves here as it does in Megatron-LM. The 0.16.1 wheel ships the
compiled dataset helpers (``megatron.core.datasets.helpers_cpp``); a source install without them builds
them on first use with ``make -C megatron/core/datasets`` (megatron-core's own Makefile).

The order of samples is Megatron's: global batch ``i`` is samples ``[i*G, (i+1)*G)`` of the training
dataset, cut into micro-batches, each spread over the data-parallel ranks. The data position is therefore
one number, the consumed sample count, and it is the same whatever the data-parallel size.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

import torch

from megatron_tibetan.config import ConfigError, data_blend
from megatron_tibetan.data.indexed import DatasetFileError, check_dataset

# megatron-core's "no pad token" marker: SmolLM2/Qwen pads equal their eos, which must stay a real label.
NO_PAD = -1


@dataclass
class DatasetTokenizer:
    """The few tokenizer facts GPTDataset reads (eod, pad, vocabulary size, an identity for cache keys)."""

    eod: int
    vocab_size: int
    name: str
    pad: int = NO_PAD

    @property
    def unique_identifiers(self) -> dict:
        return {"class": type(self).__name__, "name": self.name, "eod": self.eod, "vocab_size": self.vocab_size}

    @classmethod
    def from_spec(cls, spec: str) -> "DatasetTokenizer":
        from megatron_tibetan.tokenizer.base import load_tokenizer

        tok = load_tokenizer(spec)
        eod = tok.eos_token_id
        if eod is None:
            raise ConfigError(f"data.tokenizer {spec!r} has no eos token, so no end-of-document id")
        return cls(eod=int(eod), vocab_size=len(tok), name=str(spec))


def check_prefixes(prefixes: list[str], key: str, build_command: Optional[str] = None) -> None:
    """Every prefix has its .bin and .idx and they agree (:func:`~megatron_tibetan.data.indexed.check_dataset`),
    or an error naming the file, what was expected and found, and how to build it."""
    missing = [f"{p}{ext}" for p in prefixes for ext in (".bin", ".idx") if not Path(f"{p}{ext}").is_file()]
    hint = f"; build it with: {build_command}" if build_command else " (write it with tools/preprocess_data.py)"
    if missing:
        raise FileNotFoundError(f"{key}: missing indexed-dataset file(s) {', '.join(missing)}{hint}")
    for prefix in prefixes:
        try:
            check_dataset(prefix)
        except DatasetFileError as error:
            raise DatasetFileError(f"{key}: {error}{hint}") from None


def check_cpt_data(cfg) -> None:
    """Every data and validation prefix of a CPT config exists (before any model is built)."""
    check_prefixes(data_blend(cfg.data.paths, cfg.data.weights)[0], "data.paths", cfg.data.build_command)
    if cfg.validation.paths:
        check_prefixes(data_blend(cfg.validation.paths, None, "validation")[0], "validation.paths",
                       cfg.validation.build_command)


def dataset_stats(prefix: str) -> tuple[Path, dict] | None:
    """(path, contents) of the ``_stats.json`` written beside a dataset prefix: ``PREFIX_stats.json``, or for
    a preprocessed ``<output-prefix>_<key>_document`` the ``<output-prefix>_stats.json``; None if absent."""
    import json
    import re

    candidates = [Path(f"{prefix}_stats.json")]
    match = re.match(r"^(.*)_[^_/]+_document$", str(prefix))
    if match:
        candidates.append(Path(f"{match.group(1)}_stats.json"))
    for path in candidates:
        if path.is_file():
            try:
                return path, json.loads(path.read_text(encoding="utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError) as error:
                raise DatasetFileError(f"{path}: not a readable stats file ({error}); it is truncated or damaged: "
                                       f"copy it again or rebuild the dataset") from None
    return None


def _gpt_config(blend, split: str, seq_length: int, seed: int, tokenizer: DatasetTokenizer, cache_dir, eod_mask_loss):
    from megatron.core.datasets.gpt_dataset import GPTDatasetConfig

    return GPTDatasetConfig(
        random_seed=seed,
        sequence_length=seq_length,
        blend=blend,
        split=split,
        path_to_cache=cache_dir,
        tokenizer=tokenizer,
        reset_position_ids=False,
        reset_attention_mask=False,
        eod_mask_loss=eod_mask_loss,
        create_attention_mask=False,  # causal attention needs no explicit mask
    )


def _build(config, sizes: list[Optional[int]]):
    from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
    from megatron.core.datasets.gpt_dataset import GPTDataset

    return BlendedMegatronDatasetBuilder(GPTDataset, sizes, lambda: True, config).build()


def build_datasets(cfg, train_samples: int, valid_samples: int, seed: int, tokenizer: DatasetTokenizer):
    """(train, validation or None) datasets for a :class:`~megatron_tibetan.config.TrainingConfig`.

    Validation comes from ``validation.paths`` (all their documents) when given, else from the validation
    part of ``data.split``.
    """
    prefixes, weights = data_blend(cfg.data.paths, cfg.data.weights)
    check_prefixes(prefixes, "data.paths", cfg.data.build_command)
    common = dict(seq_length=cfg.data.seq_length, seed=seed, tokenizer=tokenizer,
                  cache_dir=cfg.data.cache_dir, eod_mask_loss=cfg.data.eod_mask_loss)
    held_out = cfg.validation.paths
    want_valid = cfg.validation.interval is not None or cfg.validation.at_start
    split_valid = valid_samples if want_valid and not held_out else None
    # megatron-core refuses a weighted blend with a split of size None: a split nobody reads is asked for 0
    unused = 0 if weights else None
    sizes = [train_samples, unused if split_valid is None else split_valid, unused]
    train, valid, _ = _build(_gpt_config((prefixes, weights), cfg.data.split, **common), sizes)
    valid = valid if split_valid is not None else None
    if train is None:
        raise ConfigError(f"data.split {cfg.data.split!r} leaves no training documents")
    if want_valid and held_out:
        vprefixes, vweights = data_blend(held_out, None, "validation")
        check_prefixes(vprefixes, "validation.paths")
        _, valid, _ = _build(_gpt_config((vprefixes, vweights), "0,1,0", **common), [None, valid_samples, None])
    if want_valid and valid is None:
        raise ConfigError(f"validation requested but data.split {cfg.data.split!r} has no validation part and validation.paths is empty")
    return train, valid


class MicroBatches:
    """Micro-batches for one data-parallel rank, in Megatron's sample order, from a consumed-sample count."""

    def __init__(self, dataset, micro_batch_size: int, dp_rank: int, dp_size: int, consumed_samples: int = 0):
        self.dataset = dataset
        self.micro_batch_size = micro_batch_size
        self.dp_rank = dp_rank
        self.dp_size = dp_size
        self.consumed_samples = consumed_samples

    def __iter__(self) -> Iterator[dict]:
        return self

    def __next__(self) -> dict:
        start = self.consumed_samples + self.dp_rank * self.micro_batch_size
        indices = range(start, start + self.micro_batch_size)
        if indices[-1] >= len(self.dataset):
            raise StopIteration
        self.consumed_samples += self.micro_batch_size * self.dp_size
        samples = [self.dataset[i] for i in indices]
        # a blend adds each sample's "dataset_id", a numpy integer
        batch = {key: torch.stack([torch.as_tensor(s[key]) for s in samples]) for key in samples[0]}
        batch["sample_indices"] = torch.tensor(list(indices))
        return batch
