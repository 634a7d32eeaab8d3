"""Layer-wise analysis on a base checkpoint and perturbed copies where we know which tensors changed."""

import json
import math

import pytest
import torch
from safetensors.torch import load_file, save_file

from megatron_tibetan.evaluation import layers
from megatron_tibetan.evaluation.layers import analyze, classify


def _save(path, tensors, config):
    path.mkdir()
    save_file({k: v.contiguous() for k, v in tensors.items()}, path / "model.safetensors")
    (path / "config.json").write_text(json.dumps(config))
    return path


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    from transformers import AutoModelForCausalLM, LlamaConfig

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
    root = tmp_path_factory.mktemp("layers")
    AutoModelForCausalLM.from_config(config).save_pretrained(root / "base")
    base = load_file(root / "base" / "model.safetensors")
    cfg = json.loads((root / "base" / "config.json").read_text())
    # known changes, of different sizes: ranks are down_proj(1) > q_proj(0) > input_layernorm(2)
    cpt = dict(base)
    cpt["model.layers.1.mlp.down_proj.weight"] = base["model.layers.1.mlp.down_proj.weight"] * 1.5
    cpt["model.layers.0.self_attn.q_proj.weight"] = base["model.layers.0.self_attn.q_proj.weight"] * 1.2
    cpt["model.layers.2.input_layernorm.weight"] = base["model.layers.2.input_layernorm.weight"] * 1.01
    cpt["lm_head.weight"] = cpt["model.embed_tokens.weight"].clone()  # a tied output stored anyway: counted once
    cpt_dir = _save(root / "cpt", cpt, cfg)
    # an SFT copy on top: the embedding grows by 20 rows and the shared rows change a little
    sft = dict(cpt)
    del sft["lm_head.weight"]
    emb = cpt["model.embed_tokens.weight"]
    new_rows = torch.randn(20, emb.shape[1]) * 0.1
    sft["model.embed_tokens.weight"] = torch.cat([emb + 0.01, new_rows])
    # the same three tensors change again, in the same order of size: a rank correlation of 1 with cpt
    for name, factor in (("layers.1.mlp.down_proj", 1.1), ("layers.0.self_attn.q_proj", 1.05), ("layers.2.input_layernorm", 1.001)):
        sft[f"model.{name}.weight"] = cpt[f"model.{name}.weight"] * factor
    sft_dir = _save(root / "sft", sft, cfg | {"vocab_size": 320})
    return root / "base", cpt_dir, sft_dir, base, cpt, sft


def test_classify_names():
    assert classify("model.layers.12.self_attn.k_proj.weight") == ("attn_k", 12)
    assert classify("model.layers.3.mlp.gate_proj.weight") == ("mlp_gate", 3)
    assert classify("model.layers.0.post_attention_layernorm.weight") == ("norm_mlp", 0)
    assert classify("model.norm.weight") == ("norm_final", None)
    assert classify("model.embed_tokens.weight") == ("embedding", None)
    assert classify("lm_head.weight") == ("output", None)
    assert classify("model.layers.1.self_attn.q_proj.bias") == ("attn_q", 1)


def test_finds_and_ranks_the_changed_tensors(checkpoints, monkeypatch, tmp_path):
    base_dir, cpt_dir, sft_dir, base, cpt, sft = checkpoints
    monkeypatch.setattr(layers, "CHUNK_ELEMENTS", 100)  # many row chunks per tensor
    result = analyze(base_dir, [cpt_dir, sft_dir], names=["cpt", "sft"], chain=True, progress=False)
    c = result["comparisons"]["cpt"]
    changed = [t for t in c["tensors"] if t["delta_norm"] > 0]
    assert [t["name"] for t in sorted(changed, key=lambda t: -t["relative"])] == [
        "model.layers.1.mlp.down_proj.weight", "model.layers.0.self_attn.q_proj.weight", "model.layers.2.input_layernorm.weight"]
    for t in changed:  # independent: full tensors, torch.linalg.norm
        d, w = cpt[t["name"]] - base[t["name"]], base[t["name"]]
        assert t["delta_norm"] == pytest.approx(torch.linalg.norm(d).item(), rel=1e-5)
        assert t["relative"] == pytest.approx((torch.linalg.norm(d) / torch.linalg.norm(w)).item(), rel=1e-5)
    assert c["tied_counted_once"] == ["lm_head.weight"] and "output" not in c["modules"]
    assert len(c["tensors"]) == len(base)
    assert c["modules"]["mlp_down"]["relative"] == pytest.approx(
        0.5 / math.sqrt(sum(base[f"model.layers.{i}.mlp.down_proj.weight"].square().sum().item() for i in range(3))
                        / base["model.layers.1.mlp.down_proj.weight"].square().sum().item()), rel=1e-5)
    assert c["cells"]["1/mlp_down"]["relative"] == pytest.approx(0.5, rel=1e-5)
    assert c["layers"][0]["relative"] > 0 and c["modules"]["attn_k"]["relative"] == 0
    down = c["modules"]["mlp_down"]
    assert down["rms_delta"] == pytest.approx(0.5 * torch.linalg.norm(base["model.layers.1.mlp.down_proj.weight"]).item() / math.sqrt(3 * 32 * 64), rel=1e-5)

    s = result["comparisons"]["sft"]  # chained: against cpt
    assert s["reference"] == "cpt"
    ext = s["extended_vocabulary"]["model.embed_tokens.weight"]
    assert ext["rows"] == 20 and ext["shared_rows"] == 300
    assert ext["norm"] == pytest.approx(torch.linalg.norm(sft["model.embed_tokens.weight"][300:]).item(), rel=1e-5)
    emb = next(t for t in s["tensors"] if t["module"] == "embedding")
    assert emb["delta_norm"] == pytest.approx(0.01 * math.sqrt(300 * 32), rel=1e-4)  # shared rows only
    corr = result["correlations"]["cpt~sft"]
    assert corr["tensors"] == 3 and corr["spearman"] == pytest.approx(1.0)

    from megatron_tibetan.evaluation.report import layers_report

    report = layers_report(result, tmp_path / "out")
    names = {p.name for p in (tmp_path / "out").iterdir()}
    assert {"analysis.json", "modules.png", "heatmap_cpt.png", "topk_sft.png", "correlation_cpt_sft.png"} <= names
    assert "model.layers.1.mlp.down_proj.weight" in report.read_text()


def test_incomparable_shapes_name_the_tensor(checkpoints, tmp_path):
    base_dir, _, _, base, _, _ = checkpoints
    bad = dict(base)
    bad["model.layers.0.mlp.up_proj.weight"] = torch.zeros(65, 32)
    bad_dir = _save(tmp_path / "bad", bad, json.loads((base_dir / "config.json").read_text()))
    with pytest.raises(ValueError, match="model.layers.0.mlp.up_proj.weight"):
        analyze(base_dir, [bad_dir], progress=False)
