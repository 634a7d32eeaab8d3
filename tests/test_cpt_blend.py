"""CPT on a blend of datasets (``data.paths`` with ``data.weights``, megatron-core's BlendedDataset): the
samples come from each dataset in its share, each sample's tokens from the dataset it names, with
validation off and on (the split of a blend)."""

from __future__ import annotations

import numpy as np
import pytest

from megatron_tibetan.config import load_config
from megatron_tibetan.data.pretraining import DatasetTokenizer, MicroBatches, build_datasets

from test_train_config import TINY

EOD = 0
RANGES = ((10, 100), (200, 300))  # dataset k's tokens lie in RANGES[k]: a sample tells where it came from


def _dataset(prefix: str, low: int, high: int, documents: int, seed: int) -> None:
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    rng = np.random.default_rng(seed)
    builder = IndexedDatasetBuilder(f"{prefix}.bin", dtype=np.uint16)
    for _ in range(documents):
        document = np.append(rng.integers(low, high, size=rng.integers(20, 60)), EOD)
        builder.add_document(document, [len(document)])
    builder.finalize(f"{prefix}.idx")


@pytest.fixture
def one_process_group(tmp_path):
    """BlendedDataset builds its index on rank 0 of a process group: a one-rank gloo group for the test."""
    import torch.distributed as dist

    if dist.is_initialized():  # an earlier test in this process left its one-rank group: use it
        assert dist.get_world_size() == 1
        yield
        return
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'group'}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


@pytest.mark.parametrize("validation", ["off", "split"])
def test_blend_draws_each_dataset_in_its_share(tmp_path, validation, one_process_group):
    prefixes = [str(tmp_path / f"set{k}") for k in range(2)]
    for k, (prefix, (low, high)) in enumerate(zip(prefixes, RANGES)):
        _dataset(prefix, low, high, documents=300, seed=k)
    overrides = [f"data.paths=[{prefixes[0]},{prefixes[1]}]", "data.weights=[0.75,0.25]", "data.seq_length=32",
                 f"data.cache_dir={tmp_path / 'cache'}", "validation.paths=null", "data.split=90,10,0"]
    overrides += ["validation.interval=null", "validation.at_start=false"] if validation == "off" else ["validation.interval=5"]
    cfg = load_config(TINY, overrides)
    train, valid = build_datasets(cfg, train_samples=400, valid_samples=40, seed=1234,
                                  tokenizer=DatasetTokenizer(eod=EOD, vocab_size=512, name="test"))
    assert (valid is None) == (validation == "off")
    counts = [0, 0]
    for batch in MicroBatches(train, micro_batch_size=4, dp_rank=0, dp_size=1):
        for ids, tokens in zip(batch["dataset_id"].tolist(), batch["tokens"]):
            low, high = RANGES[ids]
            text = tokens[tokens != EOD]
            assert ((text >= low) & (text < high)).all()  # the tokens of the dataset the sample names
            counts[ids] += 1
    assert sum(counts) == 400 and abs(counts[1] / 400 - 0.25) < 0.02
