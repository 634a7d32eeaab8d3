"""HF <-> Megatron conversion against transformers (float32, CPU): logits at TP1/TP2/PP2/TP2xPP2, bit-exact
round trips, resharding, extended vocabulary, and the errors. Multi-rank parts run in one torchrun launch
(tests/dist_convert.py)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SEQ = 24


def run_env() -> dict:
    return dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")


def assert_close_logits(ours: torch.Tensor, ref: torch.Tensor, what: str) -> None:
    """max |diff| <= 1e-4 x the logit scale (max |logit| of the reference)."""
    ours = ours[..., : ref.shape[-1]].float()
    diff = (ours - ref).abs().max().item()
    scale = ref.abs().max().item()
    assert diff <= 1e-4 * scale, f"{what}: max |logit diff| {diff:.3g} > 1e-4 x scale {scale:.3g}"


def hf_logits(hf_dir: Path, ids: torch.Tensor) -> torch.Tensor:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(hf_dir), dtype=torch.float32).eval()
    with torch.no_grad():
        return model(ids).logits


def megatron_logits(megatron_dir: Path, ids: torch.Tensor) -> torch.Tensor:
    from megatron_tibetan.checkpoint_dir import load_model_weights
    from megatron_tibetan.distributed import init_parallel
    from megatron_tibetan.models import build_model_from_dir

    init_parallel(1, 1)
    model, _ = build_model_from_dir(megatron_dir)
    load_model_weights(megatron_dir, [model])
    model.eval()
    with torch.no_grad():
        return model(ids, torch.arange(ids.shape[1]).unsqueeze(0).expand_as(ids), None)


def read_safetensors(hf_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    tensors = {}
    for file in sorted(hf_dir.glob("*.safetensors")):
        tensors.update(load_file(str(file)))
    return tensors


def tiny_llama(vocab_size: int = 1000, hidden: int = 64):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=96, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False,
                         rope_theta=500000.0, max_position_embeddings=128, rms_norm_eps=1e-5)
    return LlamaForCausalLM(config)


def tiny_qwen2():
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(vocab_size=1000, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
                         rope_theta=1000000.0, max_position_embeddings=128)
    model = Qwen2ForCausalLM(config)
    with torch.no_grad():  # transformers initialises biases to zero: make them count
        for name, param in model.named_parameters():
            if name.endswith("bias"):
                param.normal_(0, 0.5)
    return model


def tiny_qwen3():
    """Qwen3: no biases, per-head q/k RMSNorm, a head dimension (32) that is not hidden / heads (16)."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    config = Qwen3Config(vocab_size=1000, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=32, tie_word_embeddings=True,
                         rope_theta=1000000.0, max_position_embeddings=128)
    model = Qwen3ForCausalLM(config)
    with torch.no_grad():  # transformers initialises the q/k norms to ones: make them count
        for name, param in model.named_parameters():
            if name.endswith(("q_norm.weight", "k_norm.weight")):
                param.uniform_(0.5, 1.5)
    return model


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("convert")


@pytest.fixture(scope="module")
def models(work) -> dict[str, dict]:
    """name -> {hf: HF dir, megatron: TP=1 Megatron dir, ids, ref: transformers logits}."""
    from megatron_tibetan import presets
    from megatron_tibetan.convert import import_hf

    torch.manual_seed(0)
    out = {}
    for name, make in (("llama", tiny_llama), ("qwen2", tiny_qwen2), ("qwen3", tiny_qwen3)):
        make().save_pretrained(work / f"hf_{name}")
        out[name] = {"hf": work / f"hf_{name}"}
    out["smollm2"] = {"hf": presets.smollm2_hf_dir()}
    for name, case in out.items():
        vocab = json.loads((case["hf"] / "config.json").read_text())["vocab_size"]
        case["ids"] = torch.randint(0, vocab, (2, SEQ), generator=torch.Generator().manual_seed(1))
        case["ref"] = hf_logits(case["hf"], case["ids"])
        case["megatron"] = work / f"mg_{name}"
        import_hf("smollm2" if name == "smollm2" else case["hf"], case["megatron"])
    return out


@pytest.mark.parametrize("name", ["llama", "qwen2", "qwen3", "smollm2"])
def test_logits_tp1(models, name):
    case = models[name]
    spec = json.loads((case["megatron"] / "model.json").read_text())
    assert spec["padded_vocab_size"] % 128 == 0
    assert_close_logits(megatron_logits(case["megatron"], case["ids"]), case["ref"], f"{name} TP1 PP1")


# SmolLM2 has 9 heads in 3 query groups: TP=2 cannot split it, TP=3 can (and 3 divides 49,152)
LAYOUTS = {"llama": [[2, 1], [1, 2], [2, 2]], "qwen2": [[2, 1], [1, 2], [2, 2]], "qwen3": [[2, 1], [1, 2]],
           "smollm2": [[1, 2], [3, 1]]}


def launch(models, work: Path, nproc: int, tag: str) -> None:
    """One torchrun launch of tests/dist_convert.py over the layouts that use ``nproc`` ranks."""
    cases = []
    for name, case in models.items():
        layouts = [l for l in LAYOUTS[name] if nproc % (l[0] * l[1]) == 0]
        if layouts:
            torch.save(case["ids"], work / f"ids_{name}.pt")
            cases.append({"name": name, "megatron": str(case["megatron"]), "ids": str(work / f"ids_{name}.pt"),
                          "layouts": layouts, "save": name != "llama"})
    (work / f"cases_{tag}.json").write_text(json.dumps(cases))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           str(ROOT / "tests" / "dist_convert.py"), str(work / f"cases_{tag}.json")]
    result = subprocess.run(cmd, env=run_env(), capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]


def test_logits_llama3_rope_scaling(tmp_path):
    """Llama 3.x RoPE scaling (factor 32; low/high frequency factors 1/4 over 8192 positions, as Llama 3.2)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from megatron_tibetan.convert import import_hf

    rope = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
    config = LlamaConfig(vocab_size=500, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=1, rope_parameters=rope, max_position_embeddings=256)
    torch.manual_seed(4)
    model = LlamaForCausalLM(config)
    with torch.no_grad():  # sharp attention, so that positions (and their RoPE angles) matter
        for layer in model.model.layers:
            layer.self_attn.q_proj.weight.mul_(20)
            layer.self_attn.k_proj.weight.mul_(20)
    model.save_pretrained(tmp_path / "hf")
    ids = torch.randint(0, 500, (1, 256), generator=torch.Generator().manual_seed(5))
    import_hf(tmp_path / "hf", tmp_path / "mg")
    assert_close_logits(megatron_logits(tmp_path / "mg", ids), hf_logits(tmp_path / "hf", ids), "llama3 RoPE scaling")


@pytest.fixture(scope="module")
def dist(models, work) -> Path:
    """Two torchrun launches: 4 ranks (TP2 x DP2, PP2 x DP2, TP2 x PP2) and 3 ranks (TP3, for SmolLM2)."""
    launch(models, work, 4, "4")
    launch(models, work, 3, "3")
    return work


@pytest.mark.parametrize("name,layout", [(n, l) for n, ls in LAYOUTS.items() for l in ls])
def test_logits_parallel(models, dist, name, layout):
    logits = torch.load(dist / f"logits_{name}_tp{layout[0]}pp{layout[1]}.pt")
    assert_close_logits(logits, models[name]["ref"], f"{name} TP{layout[0]} PP{layout[1]}")


def assert_same_hf(original_dir: Path, exported_dir: Path) -> None:
    """Every tensor present in both, same dtype, bit-identical; and the same greedy generation."""
    from transformers import AutoModelForCausalLM

    original, exported = read_safetensors(original_dir), read_safetensors(exported_dir)
    assert sorted(original) == sorted(exported)
    for key, tensor in original.items():
        assert exported[key].dtype == tensor.dtype and torch.equal(exported[key], tensor), key
    if (exported_dir / "tokenizer.json").is_file():
        from megatron_tibetan.tokenizer.base import load_tokenizer

        prompt = dict(load_tokenizer(str(exported_dir))("The capital of France is", return_tensors="pt"))
    else:
        prompt = {"input_ids": torch.arange(3, 11).unsqueeze(0)}
    tokens = []
    for where in (original_dir, exported_dir):
        model = AutoModelForCausalLM.from_pretrained(str(where), dtype=torch.float32).eval()
        tokens.append(model.generate(**prompt, max_new_tokens=12, do_sample=False)[0].tolist())
    assert tokens[0] == tokens[1]


@pytest.mark.parametrize("name,saved", [("qwen2", "tp2pp2"), ("qwen3", "tp2pp1"), ("smollm2", "tp3pp1")])
def test_reshard_to_tp1_exports_bit_exact(models, dist, tmp_path, name, saved):
    """Saved at TP2 x PP2 (qwen2: tied embeddings across stages, QKV bias), TP2 (qwen3: q/k norms) or TP3 (SmolLM2) by
    dist_convert.py, loaded at TP1 x PP1 (dist_checkpointing reshards), exported to HF."""
    from megatron_tibetan.convert import export_hf

    case = models[name]
    resharded = dist / f"{name}_{saved}"
    assert_close_logits(megatron_logits(resharded, case["ids"]), case["ref"], f"{name} {saved} -> TP1")
    export_hf(resharded, tmp_path / "hf")
    assert_same_hf(case["hf"], tmp_path / "hf")


def test_round_trip_tp2_pp2_cli(models, tmp_path):
    """HF -> Megatron at TP=2 x PP=2 (the CLI starts torchrun itself; each stage maps its own global layer
    numbers, the last stage reads the tied output layer from the embedding) -> HF: bit-exact, same generation."""
    tool = str(ROOT / "tools" / "convert_checkpoint.py")
    source, megatron, back = models["qwen2"]["hf"], tmp_path / "mg", tmp_path / "hf_back"
    outputs = []
    for args in (["import", "--hf", str(source), "--output", str(megatron), "--tp", "2", "--pp", "2"],
                 ["export", "--megatron", str(megatron), "--output", str(back)]):
        result = subprocess.run([sys.executable, tool, *args], env=run_env(), capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
        outputs.append(result.stdout)
    assert "(TP=2, PP=2)" in outputs[0]
    assert_same_hf(source, back)


@pytest.fixture(scope="module")
def extended_tokenizer(work) -> tuple[Path, dict]:
    from megatron_tibetan.tokenizer.extend import extend_tokenizer

    data = ROOT.parent / "shared" / "data" / "mono" / "nanhai.bo.txt.xz"
    extension = extend_tokenizer("smollm2", [data], 40, work / "tok", max_lines_per_file=500)
    assert extension["num_new_tokens"] > 0
    return work / "tok", extension


@pytest.mark.parametrize("spare_rows", [0, 8])
def test_extended_vocabulary_keeps_base_logits(extended_tokenizer, tmp_path, spare_rows):
    """Resize for an extended tokenizer: logits on base ids equal the original model's, base rows unchanged,
    new rows from the tokenizer's initialisation. ``spare_rows``: embedding rows past the tokenizer (as
    Qwen2.5's 151,936 rows for 151,665 tokens), which new tokens take over."""
    from megatron_tibetan.convert import export_hf, import_hf
    from megatron_tibetan.tokenizer.base import load_tokenizer
    from megatron_tibetan.tokenizer.embeddings import init_new_embeddings

    tok, extension = extended_tokenizer
    base = load_tokenizer("smollm2")
    n = len(base)
    torch.manual_seed(2)
    hf_dir = tmp_path / "hf"
    tiny_llama(vocab_size=n + spare_rows, hidden=32).save_pretrained(hf_dir)
    base.save_pretrained(hf_dir)
    ids = torch.randint(0, n, (2, SEQ), generator=torch.Generator().manual_seed(3))
    ref = hf_logits(hf_dir, ids)[..., :n]

    import_hf(hf_dir, tmp_path / "mg_base")
    spec = import_hf(hf_dir, tmp_path / "mg", tokenizer=str(tok))
    assert spec["hf_config"]["vocab_size"] == extension["vocab_size"]
    logits = megatron_logits(tmp_path / "mg", ids)
    assert logits.shape[-1] == spec["padded_vocab_size"] > n
    assert torch.equal(logits[..., :n], megatron_logits(tmp_path / "mg_base", ids)[..., :n]), \
        "base-vocabulary logits changed by the resize"
    assert_close_logits(logits[..., :n], ref, "extended vocabulary vs the original transformers model")

    export_hf(tmp_path / "mg", tmp_path / "back")
    original, exported = read_safetensors(hf_dir), read_safetensors(tmp_path / "back")
    extended = load_tokenizer(str(tmp_path / "back"))
    assert len(extended) == extension["vocab_size"]
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        assert exported[name].shape[0] == extension["vocab_size"]
        assert torch.equal(exported[name][:n], original[name][:n])
        expected = init_new_embeddings(base, extended, original[name], "subtoken_mean", extension["vocab_size"])
        assert torch.equal(exported[name][n:], expected[n:]) and exported[name][n:].abs().sum() > 0, name


def test_bf16_round_trip_keeps_dtype(models, tmp_path):
    """A bfloat16 checkpoint stays bfloat16 (megatron keeps torch norms in float32; export casts back)."""
    from transformers import AutoModelForCausalLM

    from megatron_tibetan.convert import export_hf, import_hf

    AutoModelForCausalLM.from_pretrained(str(models["qwen2"]["hf"]), dtype=torch.bfloat16).save_pretrained(tmp_path / "hf")
    assert import_hf(tmp_path / "hf", tmp_path / "mg")["params_dtype"] == "bfloat16"
    export_hf(tmp_path / "mg", tmp_path / "back")
    original, exported = read_safetensors(tmp_path / "hf"), read_safetensors(tmp_path / "back")
    assert sorted(original) == sorted(exported)
    for key, tensor in original.items():
        assert tensor.dtype == exported[key].dtype == torch.bfloat16 and torch.equal(exported[key], tensor), key


def test_sharded_safetensors_export_and_import(models, tmp_path):
    """Export in several safetensors shards with the HF index; transformers loads it; import reads it back."""
    from megatron_tibetan.convert import export_hf, import_hf

    case = models["llama"]
    export_hf(case["megatron"], tmp_path / "sharded", max_shard_bytes=100_000)
    assert len(list((tmp_path / "sharded").glob("model-*-of-*.safetensors"))) > 2
    assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    assert torch.equal(hf_logits(tmp_path / "sharded", case["ids"]), case["ref"])
    import_hf(tmp_path / "sharded", tmp_path / "mg")
    export_hf(tmp_path / "mg", tmp_path / "back")
    original, exported = read_safetensors(case["hf"]), read_safetensors(tmp_path / "back")
    assert sorted(original) == sorted(exported) and all(torch.equal(original[k], exported[k]) for k in original)


# --- errors -------------------------------------------------------------------------------------------

def test_error_unsupported_architecture(tmp_path):
    from transformers import GPT2Config

    from megatron_tibetan.convert import import_hf
    from megatron_tibetan.models import UnsupportedModelError

    GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=100).save_pretrained(tmp_path)
    with pytest.raises(UnsupportedModelError, match="model_type='gpt2'"):
        import_hf(tmp_path, tmp_path / "mg")


def test_error_output_exists(models):
    from megatron_tibetan.convert import import_hf

    with pytest.raises(FileExistsError, match="already holds a Megatron checkpoint"):
        import_hf(models["llama"]["hf"], models["llama"]["megatron"])


def test_error_tp_must_divide_heads_and_groups(models, tmp_path):
    from megatron_tibetan.convert import import_hf

    with pytest.raises(ValueError, match="tensor parallel size 3 must divide the attention heads"):
        import_hf(models["llama"]["hf"], tmp_path / "mg", tp=3)
    with pytest.raises(ValueError, match=r"query groups \(num_key_value_heads=2\)"):
        import_hf(models["llama"]["hf"], tmp_path / "mg", tp=4)


def test_error_tokenizer_checkpoint_mismatch(models, tmp_path):
    from megatron_tibetan.convert import import_hf

    # 49,152 tokens for 1,000 embedding rows, and nothing says which base tokenizer the rows belong to
    with pytest.raises(ValueError, match="49152 tokens, the checkpoint 1000 embedding rows"):
        import_hf(models["llama"]["hf"], tmp_path / "mg", tokenizer="smollm2")
    # the checkpoint's own tokenizer does not fit its embedding
    hf = tmp_path / "hf"
    shutil.copytree(models["llama"]["hf"], hf)
    from megatron_tibetan.tokenizer.base import load_tokenizer

    load_tokenizer("smollm2").save_pretrained(hf)
    with pytest.raises(ValueError, match="has 49152 tokens but the checkpoint has 1000 embedding rows"):
        import_hf(hf, tmp_path / "mg2")


def test_error_missing_and_unknown_tensors(models, tmp_path):
    from safetensors.torch import save_file

    from megatron_tibetan.convert import MissingTensorsError, import_hf

    tensors = read_safetensors(models["llama"]["hf"])
    hf = tmp_path / "hf"
    shutil.copytree(models["llama"]["hf"], hf)
    dropped = ["model.layers.1.mlp.up_proj.weight", "lm_head.weight"]
    save_file({k: v for k, v in tensors.items() if k not in dropped}, str(hf / "model.safetensors"))
    with pytest.raises(MissingTensorsError) as error:
        import_hf(hf, tmp_path / "mg")
    assert all(name in str(error.value) for name in dropped) and "2 tensors missing" in str(error.value)

    save_file({**tensors, "model.layers.0.self_attn.q_norm.weight": torch.ones(16)}, str(hf / "model.safetensors"))
    with pytest.raises(ValueError, match="does not map: model.layers.0.self_attn.q_norm.weight"):
        import_hf(hf, tmp_path / "mg")


def test_table_covers_transformer_engine_names():
    from megatron_tibetan.convert.weights import _lookup
    from megatron_tibetan.models import get_family

    lookup = _lookup("qwen2")
    te = lookup["decoder.layers.*.self_attention.linear_qkv.layer_norm_weight"]
    local = lookup["decoder.layers.*.input_layernorm.weight"]
    assert te is local and te.hf == "model.layers.*.input_layernorm.weight"
    assert lookup["decoder.layers.*.mlp.linear_fc1.layer_norm_weight"].hf == "model.layers.*.post_attention_layernorm.weight"
    assert len(get_family("qwen2").weights) == len(get_family("llama").weights) + 1  # + the QKV bias
