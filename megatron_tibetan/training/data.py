"""The data a run trains on, chosen by ``data.kind``; the only thing CPT and SFT do differently.

- ``gpt`` (continual pretraining): megatron-core's GPTDataset over ``data.paths`` (blended, cut into
  sequences, Megatron's sample order), sized for ``train.iterations`` global batches; validation from the
  split or ``validation.paths``.
- ``sft``: the examples of ``tools/prepare_sft.py`` (:class:`~megatron_tibetan.data.sft_dataset.SFTDataset`),
  packed (one pack per micro-batch, fed to attention as THD ``PackedSeqParams``) or padded; read for
  ``train.epochs`` passes with a fresh seeded order per epoch (or for ``train.iterations``), sample ``k``
  fixed by ``k`` alone so that a run resumes mid-epoch exactly; validation on the held-out split.

Both give micro-batches whose items hold ``tokens``, ``labels``, ``loss_mask`` and ``position_ids``; the
loss is the mean over trained tokens of the whole global batch (``calculate_per_token_loss``): every
trained token weighs the same whatever the length of its example, the packing, the micro-batching or the
data-parallel size, so a packed batch gives exactly the loss of the same examples unpacked.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from megatron_tibetan.config import ConfigError, TrainingConfig


@dataclass
class RunData:
    train: object
    valid: object | None
    iterations: int  # optimizer steps of the run
    valid_iterations: int  # micro-batches per validation (per data-parallel rank)
    notes: list[str] = field(default_factory=list)  # what the builder decided, for the log


def build_data(cfg: TrainingConfig, tokenizer, dp_size: int) -> RunData:
    seed = cfg.data.seed if cfg.data.seed is not None else cfg.train.seed
    if cfg.data.kind == "sft":
        return _sft(cfg, dp_size, seed)
    from megatron_tibetan.data.pretraining import build_datasets

    train_samples = cfg.train.iterations * cfg.batch.global_batch_size
    valid_samples = cfg.validation.iterations * cfg.batch.micro_batch_size * dp_size
    train, valid = build_datasets(cfg, train_samples, valid_samples, seed, tokenizer)
    return RunData(train, valid, cfg.train.iterations, cfg.validation.iterations, notes=[_blend_note(cfg)])


def _blend_note(cfg: TrainingConfig) -> str:
    """The CPT data in one line: each prefix with its share of the samples."""
    from megatron_tibetan.config import data_blend

    prefixes, weights = data_blend(cfg.data.paths, cfg.data.weights)
    if not weights:
        return f"CPT data: {', '.join(prefixes)} ({cfg.data.seq_length}-token samples)"
    total = sum(weights)
    return (f"CPT data, a blend ({cfg.data.seq_length}-token samples): "
            + ", ".join(f"{w / total:.0%} {p}" for p, w in zip(prefixes, weights)))


def _sft(cfg: TrainingConfig, dp_size: int, seed: int) -> RunData:
    from megatron_tibetan.data.sft_dataset import EpochSamples, load_sft_datasets

    prefix = str(cfg.data.paths[0])
    train, valid = load_sft_datasets(prefix, cfg.data.seq_length, pack=cfg.data.pack)
    gbs, mbs = cfg.batch.global_batch_size, cfg.batch.micro_batch_size
    unit = "packs" if cfg.data.pack else "examples"
    notes = [f"SFT data {prefix}: {train.num_examples} training examples in {len(train)} {unit} of "
             f"{cfg.data.seq_length} positions ({train.efficiency:.1%} of positions are real tokens)"]
    if cfg.train.epochs is not None:
        epochs = cfg.train.epochs
        iterations = epochs * len(train) // gbs
        if iterations == 0:
            raise ConfigError(f"data.paths: {len(train)} training {unit} x train.epochs {epochs} make no global batch "
                              f"of {gbs} (batch.global_batch_size)")
        left = epochs * len(train) - iterations * gbs
        notes.append(f"{epochs} epoch(s) = {iterations} iterations of {gbs} {unit}"
                     + (f"; the last {left} {unit} of the last epoch make no full batch and are not trained" if left else ""))
    else:
        iterations = cfg.train.iterations
        epochs = max(1, math.ceil(iterations * gbs / len(train)))
        notes.append(f"{iterations} iterations read {iterations * gbs / len(train):.2f} epoch(s) of {len(train)} {unit}")
    valid_iterations = cfg.validation.iterations
    if valid is not None:
        available = len(valid) // (mbs * dp_size)
        if valid_iterations > available:
            notes.append(f"validation.iterations {valid_iterations} -> {available}: the held-out split has "
                         f"{len(valid)} {unit}, {mbs * dp_size} per micro-batch step")
            valid_iterations = available
        if valid_iterations == 0:
            notes.append(f"validation off: the held-out split ({len(valid)} {unit}) fills no micro-batch step")
            valid = None
    elif cfg.validation.interval or cfg.validation.at_start:
        notes.append(f"validation off: {prefix} has no held-out split (prepared with --valid-fraction 0)")
    return RunData(EpochSamples(train, epochs, seed, mbs), valid, iterations, valid_iterations, notes)
