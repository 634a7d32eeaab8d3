"""The SFT dataset the training loop reads: examples from ``tools/prepare_sft.py``, packed or padded.

Files (written by :mod:`megatron_tibetan.data.sft`, megatron-core indexed datasets, one sequence per
example, in the same order): ``<prefix>_<split>_tokens.bin/.idx`` (token ids, the tokenizer's dtype)
and ``<prefix>_<split>_loss_mask.bin/.idx`` (uint8, 1 where the token is trained: assistant content
and its end-of-turn token), for ``split`` in ``train`` and ``valid``; ``<prefix>_stats.json`` gives the
pad id (the eod id). An example of ``n`` tokens takes ``n - 1`` positions: inputs ``ids[:-1]``,
next-token targets ``ids[1:]``, trained where ``mask[1:]`` is 1 (Megatron's convention: a sequence of
``seq_length`` positions holds ``seq_length + 1`` tokens).

Items (dicts of tensors, no batch dimension; ``S`` = ``seq_length``):

packed (``pack=True``; several examples per item, first-fit-decreasing, fixed once at construction):
    ``tokens``        int64 [S]   inputs, examples back to back, then padding (the pad id)
    ``labels``        int64 [S]   next-token targets within each example; always a valid id (the pad id
                                  where nothing is trained: megatron-core's loss has no ignore index)
    ``loss_mask``     float32 [S] 1.0 exactly at trained targets; 0 on prompts, template and padding
    ``position_ids``  int64 [S]   0, 1, ... restarting at each example (and at the padding)
    ``cu_seqlens``    int32 [k+1] example boundaries ``[0, n1, n1+n2, ..., S]``; the padding, when any,
                                  is the last segment, so ``cu_seqlens[-1] == S`` as the THD format wants
    ``max_seqlen``    int32 []    the longest segment
  A micro-batch is one item with a batch dimension of 1; :func:`packed_seq_params` turns it into
  megatron-core's ``PackedSeqParams(qkv_format="thd", ...)``, and :func:`block_causal_mask` into the
  equivalent explicit mask for attention without THD support.

padded (``pack=False``; one example per item, right-padded to S):
    ``tokens``, ``labels``, ``loss_mask``, ``position_ids`` as above (positions run on into the padding)
    ``length``        int64 []    real positions; under causal attention real tokens never see the
                                  padding after them, so no attention mask is needed
  Stack items into a micro-batch, then :func:`trim_padding` cuts the columns past its longest example.
  :meth:`SFTDataset.order` with ``micro_batch_size`` groups examples of similar length (length-bucketed
  padding).

Epochs: :meth:`SFTDataset.order` ``(epoch, seed)`` is a deterministic permutation, fresh per epoch;
:class:`EpochSamples` lays the epochs end to end, so sample ``k`` of a run is fixed by ``k`` alone and a
run resumes mid-epoch exactly from its consumed-sample count (as megatron-core's GPTDataset order).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from megatron_tibetan.data.indexed import DatasetFileError, check_dataset
from megatron_tibetan.data.sft_pack import bucketed_order, first_fit_decreasing, packing_efficiency
from megatron_tibetan.text.readers import InputError

SPLITS = ("train", "valid")
TOKENS, LOSS_MASK = "tokens", "loss_mask"
BUILD_COMMAND = "tools/prepare_sft.py --pairs LANG=SRC,BO ... --tokenizer SPEC --output PREFIX"


def split_prefix(prefix: str, split: str, kind: str) -> str:
    """``<prefix>_<split>_<kind>`` (kind: tokens or loss_mask), without .bin/.idx."""
    return f"{prefix}_{split}_{kind}"


def has_split(prefix: str, split: str) -> bool:
    return all(Path(split_prefix(prefix, split, k) + ext).is_file() for k in (TOKENS, LOSS_MASK) for ext in (".bin", ".idx"))


def read_stats(prefix: str) -> dict:
    path = Path(f"{prefix}_stats.json")
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; build the SFT data with: {BUILD_COMMAND}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DatasetFileError(f"{path}: not a readable stats file ({error}); it is truncated or damaged: "
                               f"rebuild the SFT data with: {BUILD_COMMAND}") from None


def check_split(prefix: str, split: str) -> None:
    """The tokens and loss-mask datasets of one split are whole (``check_dataset``) and of one preparation."""
    try:
        tokens = check_dataset(split_prefix(prefix, split, TOKENS), (np.uint16, np.int32))
        masks = check_dataset(split_prefix(prefix, split, LOSS_MASK), (np.uint8,))
    except DatasetFileError as error:
        raise DatasetFileError(f"{error}; rebuild the SFT data with: {BUILD_COMMAND}") from None
    if (tokens.sequences, tokens.tokens) != (masks.sequences, masks.tokens):
        raise DatasetFileError(
            f"{masks.prefix}.idx: {masks.sequences} examples of {masks.tokens} positions in all, but "
            f"{tokens.prefix}.idx has {tokens.sequences} of {tokens.tokens}: the two come from different "
            f"preparations; rebuild the SFT data with: {BUILD_COMMAND}")


def check_sft_data(prefix: str, build_command: str | None = None) -> None:
    """Everything an SFT run reads of ``prefix`` is there and whole, before anything is built; a missing
    prefix names ``build_command`` (the config's ``data.build_command``), else the tool that writes it."""
    if not has_split(prefix, "train"):
        raise FileNotFoundError(
            f"SFT data {prefix!r} has no train split ({split_prefix(prefix, 'train', TOKENS)}.bin/.idx and "
            f"{split_prefix(prefix, 'train', LOSS_MASK)}.bin/.idx); build it with: {build_command or BUILD_COMMAND}")
    read_stats(prefix)
    for split in SPLITS:
        if split == "train" or has_split(prefix, split):
            check_split(prefix, split)


class SFTDataset(torch.utils.data.Dataset):
    """Packed or padded SFT items of one split (see the module docstring for the item format)."""

    def __init__(self, prefix: str, split: str = "train", seq_length: int = 2048, pack: bool = True,
                 pad_id: int | None = None):
        from megatron.core.datasets.indexed_dataset import IndexedDataset

        if split not in SPLITS:
            raise ValueError(f"split {split!r}: expected one of {', '.join(SPLITS)}")
        if not has_split(prefix, split):
            raise FileNotFoundError(
                f"SFT data {prefix!r} has no {split} split ({split_prefix(prefix, split, TOKENS)}.bin/.idx and "
                f"{split_prefix(prefix, split, LOSS_MASK)}.bin/.idx); build it with: {BUILD_COMMAND}"
            )
        check_split(prefix, split)
        self.prefix, self.split, self.seq_length, self.pack = prefix, split, seq_length, pack
        self.pad_id = int(read_stats(prefix)["eod_id"] if pad_id is None else pad_id)
        self.tokens = IndexedDataset(split_prefix(prefix, split, TOKENS), mmap=True)
        self.masks = IndexedDataset(split_prefix(prefix, split, LOSS_MASK), mmap=True)
        lengths = np.asarray(self.tokens.sequence_lengths, dtype=np.int64)
        if not np.array_equal(lengths, np.asarray(self.masks.sequence_lengths, dtype=np.int64)):
            raise ValueError(f"{prefix} ({split}): the tokens and loss_mask datasets do not hold sequences of equal lengths")
        self.positions = lengths - 1  # positions each example takes
        too_long = np.flatnonzero(self.positions > seq_length)
        if len(too_long):
            i = int(too_long[0])
            raise InputError(
                f"{prefix} ({split}): {len(too_long)} example(s) longer than data.seq_length {seq_length} (example {i}: "
                f"{int(self.positions[i])} positions); prepare the data with tools/prepare_sft.py --max-length "
                f"{seq_length}, or raise data.seq_length"
            )
        self.packs = first_fit_decreasing(self.positions, seq_length) if pack else None

    def __len__(self) -> int:
        return len(self.packs) if self.pack else len(self.positions)

    @property
    def num_examples(self) -> int:
        return len(self.positions)

    @property
    def efficiency(self) -> float:
        """Real positions / sequence positions: packing efficiency, or 1 - padding share when padded."""
        return packing_efficiency(self.positions, self.packs or [[i] for i in range(len(self.positions))], self.seq_length)

    def example(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """(token ids, trained flags) of example ``i`` as stored."""
        return np.asarray(self.tokens[i], dtype=np.int64), np.asarray(self.masks[i], dtype=bool)

    def __getitem__(self, index: int) -> dict:
        S = self.seq_length
        tokens = np.full(S, self.pad_id, dtype=np.int64)
        labels = np.full(S, self.pad_id, dtype=np.int64)
        loss_mask = np.zeros(S, dtype=np.float32)
        position_ids = np.zeros(S, dtype=np.int64)
        members = self.packs[index] if self.pack else [index]
        cu = [0]
        for i in members:
            ids, trained = self.example(i)
            a, b = cu[-1], cu[-1] + len(ids) - 1
            tokens[a:b], labels[a:b], loss_mask[a:b] = ids[:-1], ids[1:], trained[1:]
            position_ids[a:b] = np.arange(b - a)
            cu.append(b)
        if not self.pack:
            position_ids[cu[-1]:] = np.arange(cu[-1], S)
            return {"tokens": torch.from_numpy(tokens), "labels": torch.from_numpy(labels),
                    "loss_mask": torch.from_numpy(loss_mask), "position_ids": torch.from_numpy(position_ids),
                    "length": torch.tensor(cu[-1], dtype=torch.int64)}
        if cu[-1] < S:  # the padding is a segment of its own
            position_ids[cu[-1]:] = np.arange(S - cu[-1])
            cu.append(S)
        cu_seqlens = torch.tensor(cu, dtype=torch.int32)
        return {"tokens": torch.from_numpy(tokens), "labels": torch.from_numpy(labels),
                "loss_mask": torch.from_numpy(loss_mask), "position_ids": torch.from_numpy(position_ids),
                "cu_seqlens": cu_seqlens, "max_seqlen": (cu_seqlens[1:] - cu_seqlens[:-1]).max().to(torch.int32)}

    def order(self, epoch: int, seed: int, micro_batch_size: int = 1) -> np.ndarray:
        """The item order of ``epoch``: a permutation fixed by (seed, epoch). Padded items with
        ``micro_batch_size`` > 1 come in runs of that size with similar lengths."""
        rng = np.random.default_rng([seed, epoch])
        if self.pack or micro_batch_size == 1:
            return rng.permutation(len(self))
        return bucketed_order(self.positions, micro_batch_size, rng)


class EpochSamples(torch.utils.data.Dataset):
    """``epochs`` passes over ``dataset`` end to end, each in ``dataset.order(epoch, seed)``: sample ``k``
    is item ``order(k // n)[k % n]``, so a consumed-sample count fixes the data position exactly."""

    def __init__(self, dataset: SFTDataset, epochs: int, seed: int, micro_batch_size: int = 1):
        if epochs < 1:
            raise ValueError(f"epochs {epochs} must be at least 1")
        self.dataset, self.epochs, self.seed, self.micro_batch_size = dataset, epochs, seed, micro_batch_size
        self._orders: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return self.epochs * len(self.dataset)

    def position(self, k: int) -> tuple[int, int]:
        """(epoch, index within the epoch) of sample ``k``."""
        return divmod(k, len(self.dataset))

    def __getitem__(self, k: int) -> dict:
        if not 0 <= k < len(self):
            raise IndexError(f"sample {k} outside {self.epochs} epoch(s) of {len(self.dataset)}")
        epoch, i = self.position(k)
        if epoch not in self._orders:
            self._orders = {epoch: self.dataset.order(epoch, self.seed, self.micro_batch_size)}
        return self.dataset[int(self._orders[epoch][i])]


def packed_seq_params(batch: dict):
    """megatron-core's ``PackedSeqParams`` (THD) for a packed micro-batch of one item."""
    from megatron.core.packed_seq_params import PackedSeqParams

    cu = batch["cu_seqlens"]
    if cu.dim() == 2:
        if cu.shape[0] != 1:
            raise ValueError(f"a packed micro-batch holds one pack, got {cu.shape[0]}")
        cu = cu[0]
    max_seqlen = int(batch["max_seqlen"].max())
    return PackedSeqParams(qkv_format="thd", cu_seqlens_q=cu, cu_seqlens_kv=cu, max_seqlen_q=max_seqlen,
                           max_seqlen_kv=max_seqlen)


def block_causal_mask(cu_seqlens: torch.Tensor, seq_length: int) -> torch.Tensor:
    """bool [1, 1, S, S], True where attention is NOT allowed (megatron-core's convention): causal and
    kept inside each segment of ``cu_seqlens``."""
    cu = cu_seqlens.reshape(-1).to(torch.int64)
    segment = torch.bucketize(torch.arange(seq_length), cu[1:], right=True)
    same = segment[:, None] == segment[None, :]
    causal = torch.ones(seq_length, seq_length, dtype=torch.bool).tril()
    return ~(same & causal)[None, None]


_PER_POSITION = ("tokens", "labels", "loss_mask", "position_ids")


def trim_padding(batch: dict, multiple: int = 8) -> dict:
    """A padded micro-batch cut to its longest example, rounded up to ``multiple`` (at most S)."""
    width = batch["tokens"].shape[-1]
    keep = min(width, -(-int(batch["length"].max()) // multiple) * multiple)
    return {k: (v[..., :keep] if k in _PER_POSITION else v) for k, v in batch.items()}


def load_sft_datasets(prefix: str, seq_length: int, pack: bool = True) -> tuple[SFTDataset, SFTDataset | None]:
    """(train, valid or None when the data was prepared with --valid-fraction 0)."""
    train = SFTDataset(prefix, "train", seq_length, pack)
    valid = SFTDataset(prefix, "valid", seq_length, pack) if has_split(prefix, "valid") else None
    return train, valid
