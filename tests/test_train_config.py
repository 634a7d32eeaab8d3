"""Training config: YAML + overrides, clear errors for bad keys/values, start-up checks (no megatron import)."""

from __future__ import annotations

from pathlib import Path

import pytest

from megatron_tibetan.config import ConfigError, data_blend, load_config
from megatron_tibetan.training import checks

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs/cpt/tiny-cpu.yaml"


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*/*.yaml")), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_config_loads(path):
    cfg = load_config(path)
    assert cfg.data.paths and (cfg.train.iterations or cfg.train.epochs)
    assert cfg.data.kind == path.parent.name.replace("cpt", "gpt")


@pytest.mark.parametrize("overrides, message", [
    (["train.epochs=2"], "train.epochs needs data.kind sft"),
    (["data.kind=sft", "data.paths=[p]", "batch.micro_batch_size=1", "batch.global_batch_size=8", "train.epochs=2"],
     "set one of train.epochs"),
    (["data.kind=sft", "data.paths=[p]", "train.iterations=5"], "set batch.micro_batch_size=1"),
    (["data.kind=sft", "data.paths=[p,q]", "batch.micro_batch_size=1"], "takes one PREFIX"),
    (["train.iterations=null"], "train.iterations is null"),
])
def test_sft_settings_are_checked(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(TINY, overrides)


def test_required_override_keys():
    cfg = load_config(TINY, [
        "parallel.tensor_model_parallel_size=2", "parallel.pipeline_model_parallel_size=2", "train.iterations=7",
        "train.seed=5", "checkpoint.dir=/tmp/x", "checkpoint.save_interval=3", "checkpoint.load=/tmp/y",
        "logging.dir=/tmp/z", "data.paths=[a_text_document,b_text_document]",
    ])
    assert (cfg.parallel.tensor_model_parallel_size, cfg.parallel.pipeline_model_parallel_size) == (2, 2)
    assert (cfg.train.iterations, cfg.train.seed) == (7, 5)
    assert (cfg.checkpoint.dir, cfg.checkpoint.save_interval, cfg.checkpoint.load) == ("/tmp/x", 3, "/tmp/y")
    assert cfg.logging.dir == "/tmp/z" and cfg.data.paths == ["a_text_document", "b_text_document"]
    assert load_config(TINY, ["data.paths=one_text_document"]).data.paths == ["one_text_document"]


@pytest.mark.parametrize("override, message", [
    ("parallel.tensor_parallel=2", "unknown key 'parallel.tensor_parallel'"),
    ("trian.iterations=2", "unknown key 'trian'"),
    ("train.iterations=ten", "train.iterations: expected int"),
    ("optimizer.lr=fast", "optimizer.lr: expected a number"),
    ("precision.dtype=fp16", "precision.dtype: 'float16' is not one of"),
    ("batch.global_batch_size=6", "not a multiple of batch.micro_batch_size"),
    ("train.iterations", "expected KEY=VALUE"),
])
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        load_config(TINY, [override])


def test_bad_yaml_key_names_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(TINY.read_text() + "\nschedule:\n  warmup_iters: 3\n")
    with pytest.raises(ConfigError, match=r"bad.yaml.*unknown key 'warmup_iters'"):
        load_config(bad)


def test_data_blend_forms():
    assert data_blend(["a", "b"], None) == (["a", "b"], None)
    assert data_blend(["0.7", "a", "0.3", "b"], None) == (["a", "b"], [0.7, 0.3])
    assert data_blend(["a", "b"], [1, 3]) == (["a", "b"], [1.0, 3.0])
    with pytest.raises(ConfigError, match="2 values for 1 paths"):
        data_blend(["a"], [1, 2])


def test_cpu_rejects_sequence_parallel_and_fp8():
    with pytest.raises(ConfigError, match="sequence_parallel is not available on CPU"):
        checks.check_device(load_config(TINY, ["parallel.sequence_parallel=true"]), "cpu", False)
    # the distributed optimizer runs and resumes exactly on CPU too (tests/test_gpu_check.py)
    checks.check_device(load_config(TINY, ["parallel.use_distributed_optimizer=true"]), "cpu", False)
    with pytest.raises(ConfigError, match="fp8"):
        checks.check_device(load_config(TINY, ["precision.fp8=hybrid", "model.transformer_impl=auto"]), "cpu", False)
    checks.check_device(load_config(TINY), "cpu", False)  # the tiny config itself is fine


def test_world_and_batch_checks():
    cfg = load_config(TINY, ["parallel.tensor_model_parallel_size=2"])
    with pytest.raises(ConfigError, match="world size 3 is not divisible"):
        checks.check_world(cfg, 3)
    assert checks.check_world(cfg, 4) == 2  # data parallel 2
    with pytest.raises(ConfigError, match=r"global_batch_size \(8\) is not divisible .* data-parallel size \(3\)"):
        checks.check_world(load_config(TINY), 3)


def test_model_checks():
    from megatron_tibetan.models.gpt import make_model_spec

    cfg = load_config(TINY, ["parallel.tensor_model_parallel_size=4"])
    spec = make_model_spec(cfg.model.hf_config)
    with pytest.raises(ConfigError, match="must divide the attention heads"):
        checks.check_model(cfg, spec, 49152)  # 2 key-value heads
    with pytest.raises(ConfigError, match="151665 ids but the model's embedding has 49152 rows"):
        checks.check_model(load_config(TINY), spec, 151665)


def test_missing_dataset_names_the_build_command(tmp_path):
    from megatron_tibetan.data.pretraining import check_prefixes

    cfg = load_config(TINY, [f"data.paths=[{tmp_path / 'nothing_text_document'}]"])
    with pytest.raises(FileNotFoundError, match=r"nothing_text_document.bin.*tools/preprocess_data.py --input ../shared/data/mono/nanhai"):
        check_prefixes(cfg.data.paths, "data.paths", cfg.data.build_command)
    # the held-out set and SFT data name theirs too (each config carries the command that builds its data)
    from megatron_tibetan.data.sft_dataset import check_sft_data

    smollm2 = load_config(ROOT / "configs/cpt/smollm2-135m.yaml", [f"validation.paths=[{tmp_path / 'flores_text_document'}]"])
    with pytest.raises(FileNotFoundError, match=r"validation.paths: .*flores_text_document.bin.*build it with: python "
                                                r"tools/preprocess_data.py --input ../shared/data/eval/flores200.dev.bo"):
        check_prefixes(smollm2.validation.paths, "validation.paths", smollm2.validation.build_command)
    for config in ("tiny-cpu", "smollm2-135m"):
        sft = load_config(ROOT / f"configs/sft/{config}.yaml")
        assert sft.data.paths == ["runs/data/sft_ntrex_smollm2"] and "--output runs/data/sft_ntrex_smollm2" in sft.data.build_command
        with pytest.raises(FileNotFoundError, match=r"has no train split.*build it with: python tools/prepare_sft.py .*--max-length 512"):
            check_sft_data(str(tmp_path / "no_sft"), sft.data.build_command)


def test_one_precision_vocabulary_with_the_short_names_as_aliases():
    """Configs, model.json and tools/evaluate.py --dtype speak torch's names; bf16/fp32 read as those."""
    from megatron_tibetan.models.gpt import DTYPES

    assert load_config(TINY).precision.dtype == "float32"
    for alias, name in (("bf16", "bfloat16"), ("fp32", "float32"), ("bfloat16", "bfloat16")):
        assert load_config(TINY, [f"precision.dtype={alias}"]).precision.dtype == name
    assert all(load_config(p).precision.dtype in DTYPES for p in (ROOT / "configs").glob("*/*.yaml"))
    import subprocess
    import sys
    for flag in ("bf16", "bfloat16", "auto"):
        out = subprocess.run([sys.executable, str(ROOT / "tools/evaluate.py"), "--dtype", flag, "--help"],
                             capture_output=True, text=True)
        assert out.returncode == 0, out.stderr


@pytest.mark.parametrize("flags, auto", [({"amx_bf16", "avx512_bf16", "avx512f"}, "bfloat16"),
                                         ({"avx512_bf16"}, "bfloat16"), ({"avx2", "avx512f"}, "float32")])
def test_precision_auto_follows_the_cpu_flags(monkeypatch, flags, auto):
    """auto is bf16 where the CPU computes it natively (AMX-BF16 or AVX512-BF16), fp32 elsewhere, with the reason;
    an explicit bf16 without native support runs with a warning; an explicit fp32 says nothing."""
    from megatron_tibetan import precision

    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset(flags))
    cfg = load_config(TINY, ["precision.dtype=auto"])
    note = checks.resolve_precision(cfg, "cpu")
    assert cfg.precision.dtype == auto and note.startswith(f"precision auto -> {auto}: the CPU ")
    assert ("has amx_bf16" in note or "has avx512_bf16" in note) == (auto == "bfloat16")
    cfg = load_config(TINY, ["precision.dtype=bf16"])
    note = checks.resolve_precision(cfg, "cpu")
    assert cfg.precision.dtype == "bfloat16" and (note is None) == (auto == "bfloat16")
    if note:
        assert note.startswith("warning: bfloat16 asked for, but the CPU has neither amx_bf16 nor avx512_bf16")
    cfg = load_config(TINY)
    assert checks.resolve_precision(cfg, "cpu") is None and cfg.precision.dtype == "float32"


def test_list_elements_are_type_checked():
    with pytest.raises(ConfigError, match=r"data.weights\[1\]: expected a number, got 'heavy'"):
        load_config(TINY, ["data.paths=[a,b]", "data.weights=[0.5,heavy]"])
    with pytest.raises(ConfigError, match=r"data.paths\[0\]: expected a string"):
        load_config(TINY, ["data.paths=[[a]]"])
    assert load_config(TINY, ["data.paths=[a,b]", "data.weights=[1,3]"]).data.weights == [1.0, 3.0]
    assert load_config(TINY, ["optimizer.lr=2e-3"]).optimizer.lr == 2e-3  # YAML 1.1 reads 2e-3 as a string


def test_resolved_config_round_trips_through_yaml(tmp_path):
    from megatron_tibetan.config import config_to_yaml

    cfg = load_config(TINY, ["train.iterations=7", "data.paths=[x_text_document]", "checkpoint.override_schedule=true"])
    saved = tmp_path / "config.yaml"
    saved.write_text(config_to_yaml(cfg))
    assert load_config(saved) == cfg


def test_tokenizer_defaults_to_the_checkpoint_and_dataset_tokenizer_is_checked(tmp_path):
    from megatron_tibetan.data.pretraining import DatasetTokenizer

    messages = []
    cfg = load_config(TINY, ["data.tokenizer=null", f"data.paths=[{tmp_path / 'nanhai_text_document'}]"])
    assert checks.resolve_tokenizer(cfg, {"tokenizer": "smollm2"}, messages.append) == "smollm2" and not messages
    with pytest.raises(ConfigError, match="data.tokenizer is not set and the model names no tokenizer"):
        checks.resolve_tokenizer(cfg, {"tokenizer": None}, messages.append)
    checks.resolve_tokenizer(load_config(TINY, ["data.tokenizer=qwen2.5"]), {"tokenizer": "smollm2"}, messages.append)
    assert messages == ["WARNING: data.tokenizer is 'qwen2.5' but the checkpoint was trained with 'smollm2'"]

    # the dataset's _stats.json (as tools/preprocess_data.py writes it) names another tokenizer
    (tmp_path / "nanhai_stats.json").write_text('{"tokenizer": "qwen2.5", "vocab_size": 151665, "eod_id": 151643}')
    smollm2 = DatasetTokenizer(eod=0, vocab_size=49152, name="smollm2")
    with pytest.raises(ConfigError, match=r"written with tokenizer 'qwen2.5' \(vocabulary 151665.*uses 'smollm2'"):
        checks.check_dataset_tokenizer(cfg, smollm2)
    (tmp_path / "nanhai_stats.json").write_text('{"tokenizer": "smollm2", "vocab_size": 49152, "eod_id": 0}')
    checks.check_dataset_tokenizer(cfg, smollm2)
