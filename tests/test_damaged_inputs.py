"""A damaged or malformed input file is named before any work starts, through the command-line entry points:
each run exits non-zero with one line naming the file and what was expected and found, prints no Python
traceback and leaves nothing under its output name."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def run(*args, timeout=300):
    return subprocess.run([sys.executable, *map(str, args)], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=timeout)


def assert_named(result, *words, code=None):
    """Non-zero (or ``code``), no traceback, and the error names every one of ``words``."""
    assert result.returncode != 0 if code is None else result.returncode == code, (result.returncode, result.stderr[-3000:])
    assert "Traceback" not in result.stderr + result.stdout, result.stderr[-3000:]
    for word in words:
        assert str(word) in result.stderr, (word, result.stderr[-3000:])


def truncate(path: Path, keep: int | None = None) -> int:
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.truncate(size // 2 if keep is None else keep)
    return size


@pytest.fixture(scope="module")
def datasets(tmp_path_factory, shared_data):
    """Two small CPT datasets (Nanhai, FLORES dev) and a small SFT dataset, each built by its tool."""
    work = tmp_path_factory.mktemp("damaged")
    out = {}
    for name, source in (("nanhai", shared_data / "mono" / "nanhai.bo.txt.xz"), ("flores", shared_data / "eval" / "flores200.dev.bo")):
        done = run("tools/preprocess_data.py", "--input", source, "--output-prefix", work / name, "--tokenizer", "smollm2",
                   "--append-eod", "--limit", "400", "--no-progress")
        assert done.returncode == 0, done.stderr
        out[name] = work / f"{name}_text_document"
    tatoeba = shared_data / "eval" / "tatoeba.bo-en"
    done = run("tools/prepare_sft.py", "--pairs", f"en={tatoeba}.en,{tatoeba}.bo", "--tokenizer", "smollm2",
               "--output", work / "sft", "--max-length", "256", "--no-progress")
    assert done.returncode == 0, done.stderr
    out["sft"] = work / "sft"
    out["work"] = work
    return out


def copy_prefix(prefix: Path, to: Path) -> Path:
    for ext in (".bin", ".idx"):
        shutil.copy(f"{prefix}{ext}", f"{to}{ext}")
    shutil.copy(prefix.parent / "nanhai_stats.json", f"{to.parent / to.name.removesuffix('_text_document')}_stats.json")
    return to


def train(config, *overrides):
    return run("-m", "megatron_tibetan.train", "--config", config, *overrides, timeout=600)


def test_cpt_on_a_truncated_bin_or_a_foreign_idx_stops_before_the_first_step(datasets, tmp_path):
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    bad = copy_prefix(datasets["nanhai"], tmp_path / "cut_text_document")
    size = truncate(Path(f"{bad}.bin"))
    common = [f"data.paths=[{bad}]", f"checkpoint.dir={tmp_path / 'ckpt'}", f"logging.dir={tmp_path / 'log'}",
              f"data.cache_dir={tmp_path / 'cache'}", "validation.interval=null", "train.iterations=2"]
    result = train("configs/cpt/tiny-cpu.yaml", *common)
    assert_named(result, f"{bad}.bin: {size // 2} bytes", f"describes {size}", code=2)
    assert not (tmp_path / "ckpt").exists()

    foreign = copy_prefix(datasets["nanhai"], tmp_path / "foreign_text_document")
    shutil.copy(f"{datasets['flores']}.idx", f"{foreign}.idx")  # an .idx of another dataset beside the .bin
    result = train("configs/cpt/tiny-cpu.yaml", *common[1:], f"data.paths=[{foreign}]")
    reference = IndexedDataset(str(datasets["flores"]))  # megatron-core's own reader (kept: it owns the memory map)
    expected = int(reference.sequence_lengths.sum()) * 2  # uint16 tokens
    assert_named(result, f"{foreign}.bin", f"describes {expected}", "another dataset", code=2)

    header = copy_prefix(datasets["nanhai"], tmp_path / "header_text_document")
    truncate(Path(f"{header}.idx"), 100)  # a cut index: its counts promise more than it holds
    assert_named(train("configs/cpt/tiny-cpu.yaml", *common[1:], f"data.paths=[{header}]"), f"{header}.idx: 100 bytes",
                 "truncated", code=2)


def test_merge_names_the_damaged_shard(datasets, tmp_path):
    good = tmp_path / "a"
    shutil.copy(f"{datasets['nanhai']}.bin", tmp_path / "a_text_document.bin")
    shutil.copy(f"{datasets['nanhai']}.idx", tmp_path / "a_text_document.idx")
    shutil.copy(datasets["nanhai"].parent / "nanhai_stats.json", tmp_path / "a_stats.json")
    for suffix in ("_text_document.bin", "_text_document.idx", "_stats.json"):
        shutil.copy(f"{good}{suffix}", tmp_path / f"b{suffix}")
    size = truncate(tmp_path / "b_text_document.bin")
    result = run("tools/merge_datasets.py", "--input", good, tmp_path / "b", "--output-prefix", tmp_path / "merged")
    assert_named(result, f"{tmp_path / 'b_text_document'}.bin: {size // 2} bytes", f"describes {size}")
    assert not list(tmp_path.glob("merged*"))


def test_sft_on_a_truncated_loss_mask_or_stats_stops_before_the_first_step(datasets, tmp_path):
    prefix = tmp_path / "sft"
    for path in datasets["work"].glob("sft_*"):
        shutil.copy(path, tmp_path / path.name)
    mask = Path(f"{prefix}_train_loss_mask.bin")
    size = truncate(mask)
    common = [f"data.paths=[{prefix}]", "checkpoint.load=null", "checkpoint.finetune=false", f"checkpoint.dir={tmp_path / 'ckpt'}",
              f"logging.dir={tmp_path / 'log'}", "data.seq_length=256", "train.epochs=null", "train.iterations=1",
              "model.hf_config=" + _tiny_hf()]
    result = train("configs/sft/tiny-cpu.yaml", *common)
    assert_named(result, f"{mask}: {size // 2} bytes", f"describes {size}", "prepare_sft", code=2)

    shutil.copy(datasets["work"] / "sft_train_loss_mask.bin", mask)
    truncate(Path(f"{prefix}_stats.json"), 50)
    assert_named(train("configs/sft/tiny-cpu.yaml", *common), f"{prefix}_stats.json: not a readable stats file", code=2)
    assert not (tmp_path / "ckpt").exists()


def _tiny_hf() -> str:
    import yaml

    hf = yaml.safe_load((ROOT / "configs" / "cpt" / "tiny-cpu.yaml").read_text())["model"]["hf_config"]
    return yaml.safe_dump(hf, default_flow_style=True).strip()


def test_sft_data_longer_than_seq_length_is_one_line(datasets, tmp_path):
    result = train("configs/sft/tiny-cpu.yaml", f"data.paths=[{datasets['sft']}]", "checkpoint.load=null",
                   "checkpoint.finetune=false", f"checkpoint.dir={tmp_path / 'ckpt'}", f"logging.dir={tmp_path / 'log'}",
                   "data.seq_length=16", "model.hf_config=" + _tiny_hf())
    assert_named(result, "longer than data.seq_length 16", "--max-length 16", code=2)


@pytest.fixture(scope="module")
def sharded(tiny_llama_dir, tmp_path_factory):
    """The tiny HF model saved in two safetensors shards with their index."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = tmp_path_factory.mktemp("sharded") / "tiny"
    AutoModelForCausalLM.from_pretrained(tiny_llama_dir).save_pretrained(path, max_shard_size="1MB")
    AutoTokenizer.from_pretrained(tiny_llama_dir).save_pretrained(path)
    assert len(list(path.glob("*.safetensors"))) >= 2
    return path


def test_a_truncated_safetensors_file_is_named_by_evaluate_and_convert(tiny_llama_dir, shared_data, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(tiny_llama_dir, model)
    weights = model / "model.safetensors"
    size = truncate(weights)
    flores = shared_data / "eval" / "flores200.dev.bo"
    result = run("tools/evaluate.py", "--model", model, "--ppl", flores, "--limit", "2", "--output", tmp_path / "eval")
    assert_named(result, f"{weights}: {size // 2} bytes", f"up to byte {size}", "truncated")
    assert not (tmp_path / "eval" / "metrics.json").exists()
    result = run("tools/convert_checkpoint.py", "import", "--hf", model, "--output", tmp_path / "megatron")
    assert_named(result, f"{weights}: {size // 2} bytes")
    assert not (tmp_path / "megatron").exists()


def test_a_missing_weight_shard_is_named(sharded, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(sharded, model)
    index = json.loads((model / "model.safetensors.index.json").read_text())
    gone = model / sorted(set(index["weight_map"].values()))[-1]
    gone.unlink()
    result = run("tools/convert_checkpoint.py", "import", "--hf", model, "--output", tmp_path / "megatron")
    assert_named(result, str(gone), "missing")
    assert not (tmp_path / "megatron").exists()


def test_a_truncated_tokenizer_file_is_named(tiny_llama_dir, shared_data, tmp_path):
    tok = tmp_path / "tok"
    tok.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tiny_llama_dir / name, tok / name)
    truncate(tok / "tokenizer.json")
    tatoeba = shared_data / "eval" / "tatoeba.bo-en"
    result = run("tools/prepare_sft.py", "--pairs", f"en={tatoeba}.en,{tatoeba}.bo", "--tokenizer", tok,
                 "--output", tmp_path / "sft" / "out", "--no-progress")
    assert_named(result, f"{tok / 'tokenizer.json'}: not a readable tokenizer file")
    assert not (tmp_path / "sft").exists() or not list((tmp_path / "sft").iterdir())


def test_a_chat_template_syntax_error_names_the_template_and_its_line(shared_data, tmp_path):
    template = tmp_path / "broken.jinja"
    template.write_text("{% for m in messages %}\n{{ m['content'] }\n{% endfor %}\n", encoding="utf-8")
    tatoeba = shared_data / "eval" / "tatoeba.bo-en"
    result = run("tools/prepare_sft.py", "--pairs", f"en={tatoeba}.en,{tatoeba}.bo", "--tokenizer", "smollm2",
                 "--chat-template", template, "--output", tmp_path / "sft" / "out", "--no-progress")
    assert_named(result, f"{template}:2: chat template syntax error: unexpected '}}'")
    assert "tatoeba" not in result.stderr  # not the first data line
    assert not (tmp_path / "sft").exists() or not list((tmp_path / "sft").iterdir())
