"""The command-line tools end to end: tools/evaluate.py (model and --hyp modes), tools/analyze_layers.py."""

import importlib.util
import json
import random
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
KEYS = {"bleu_syllable", "bleu_default", "chrf", "chrf_pp"}


def _tool(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def test_score_existing_translations(shared_data, tmp_path):
    ref = shared_data / "eval" / "tatoeba.bo-en.bo"
    lines = ref.read_text(encoding="utf-8").splitlines()
    shuffled = lines[:]
    random.Random(1).shuffle(shuffled)
    (tmp_path / "same.hyp").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (tmp_path / "shuffled.hyp").write_text("\n".join(shuffled) + "\n", encoding="utf-8")
    _tool("evaluate")(["--hyp", str(tmp_path / "same.hyp"), str(tmp_path / "shuffled.hyp"), "--ref", str(ref),
                       "--output", str(tmp_path / "out"), "--bootstrap", "100"])
    got = json.loads((tmp_path / "out" / "metrics.json").read_text())
    same, worse = got["models"]["same"][ref.name], got["models"]["shuffled"][ref.name]
    assert KEYS <= set(same)
    meaningful = KEYS - {"bleu_default"}
    assert all(same[k] == pytest.approx(100.0) for k in meaningful)
    assert all(worse[k] < same[k] for k in meaningful)
    # each short Tatoeba line is a single 13a "word" (Tibetan has no spaces): no 4-gram, so the default
    # BLEU of a perfect copy is 0; this is why the syllable BLEU exists
    assert same["bleu_default"] == 0.0
    assert got["significance"][ref.name]["bleu_syllable"]["shuffled"]["p_value"] < 0.05
    assert "Paired bootstrap" in (tmp_path / "out" / "report.md").read_text()
    # source dependence, re-scored with plain sacrebleu: the copy follows its source, the shuffle does not
    import sacrebleu

    from megatron_tibetan.evaluation.metrics import derangement
    from megatron_tibetan.text import normalize

    n = len(lines)
    other = [normalize(lines[j]) for j in derangement(n)]
    for name, hyp_lines in (("same", lines), ("shuffled", shuffled)):
        m = got["models"][name][ref.name]
        plain = sacrebleu.corpus_chrf([normalize(h) for h in hyp_lines], [other]).score
        assert m["chrf_deranged"] == pytest.approx(plain) and m["source_dependence"] == pytest.approx(m["chrf"] - plain)
    assert same["source_dependence"] > 50 and same["source_dependence_p_value"] < 0.01
    assert worse["source_dependence_ci95"][0] < 0 < worse["source_dependence_ci95"][1]
    # the length-matched swap (each reference against the hypothesis next in length), re-scored with plain sacrebleu
    from megatron_tibetan.evaluation.metrics import length_matched_swap

    own_refs = [normalize(r) for r in lines]
    for name, hyp_lines in (("same", lines), ("shuffled", shuffled)):
        m = got["models"][name][ref.name]
        swapped = [normalize(hyp_lines[j]) for j in length_matched_swap(hyp_lines)]
        matched = sacrebleu.corpus_chrf(swapped, [own_refs]).score
        assert m["chrf_length_matched"] == pytest.approx(matched)
        assert m["source_dependence_beyond_length"] == pytest.approx(m["chrf"] - matched)
        assert m["source_dependence_length_only"] == pytest.approx(matched - m["chrf_deranged"])
        assert m["length_ratio"] == pytest.approx(sum(map(len, map(normalize, hyp_lines))) / sum(map(len, own_refs)))
    floor = got["reference_floor"][ref.name]
    assert floor["chrf"] == pytest.approx(sacrebleu.corpus_chrf(other, [[normalize(r) for r in lines]]).score)
    assert "Does the output follow its source?" in (tmp_path / "out" / "report.md").read_text()
    # --limit cuts the reference too: three hypothesis lines are scored against the first three references
    (tmp_path / "three.hyp").write_text("\n".join(lines[:3]) + "\n", encoding="utf-8")
    assert _tool("evaluate")(["--hyp", str(tmp_path / "three.hyp"), "--ref", str(ref), "--limit", "3",
                              "--output", str(tmp_path / "three"), "--bootstrap", "10"]) == 0
    three = json.loads((tmp_path / "three" / "metrics.json").read_text())["models"]["three"][ref.name]
    assert three["lines"] == 3 and three["chrf"] == pytest.approx(100.0)


def test_evaluate_a_model(tiny_llama_dir, shared_data, tmp_path):
    ev = shared_data / "eval"
    out = tmp_path / "out"
    _tool("evaluate")(["--model", f"tiny={tiny_llama_dir}", "--ppl", str(ev / "tatoeba.bo-en.bo"),
                       "--translate", f"en={ev / 'tatoeba.bo-en.en'}", "--ref", str(ev / "tatoeba.bo-en.bo"),
                       "--limit", "4", "--beams", "1,2", "--max-new-tokens", "4", "--bootstrap", "20",
                       "--max-length-ratio", "en=3", "--output", str(out)])
    got = json.loads((out / "metrics.json").read_text())["models"]["tiny"]
    assert got["en-bo.greedy"]["max_length_ratio"] == 3.0 and got["en-bo.greedy"]["max_new_tokens"] == 4
    ppl = got["tatoeba.bo-en.bo"]
    assert ppl["documents"] == 4 and ppl["start_token"] == "<|im_end|>" and ppl["perplexity"] > 1 and ppl["bits_per_byte"] > 0
    for decode in ("greedy", "beam2"):
        assert KEYS | {f"{k}_ci95" for k in KEYS} <= set(got[f"en-bo.{decode}"])
        hyp = (out / f"tiny.en-bo.{decode}.hyp").read_text(encoding="utf-8")
        assert hyp.count("\n") == 4
    assert "## Perplexity" in (out / "report.md").read_text()
    # a length ratio for a language not translated, or without --translate, cannot take effect: an error
    for bad in (["--translate", f"en={ev / 'tatoeba.bo-en.en'}", "--ref", str(ev / "tatoeba.bo-en.bo"), "--max-length-ratio", "zh=6"],
                ["--ppl", str(ev / "tatoeba.bo-en.bo"), "--max-length-ratio", "2"],
                ["--translate", f"en={ev / 'tatoeba.bo-en.en'}", "--ref", str(ev / "tatoeba.bo-en.bo"), "--max-length-ratio", "en=x"]):
        assert _tool("evaluate")(["--model", str(tiny_llama_dir), "--output", str(tmp_path / "bad"), *bad]) == 1
    assert (out / "translation.png").is_file() and (out / "bits_per_byte.png").is_file()


def test_analyze_layers_tool(tiny_llama_dir, tmp_path):
    from safetensors.torch import load_file, save_file

    changed = tmp_path / "changed"
    changed.mkdir()
    tensors = load_file(tiny_llama_dir / "model.safetensors")
    tensors["model.layers.1.mlp.up_proj.weight"] = tensors["model.layers.1.mlp.up_proj.weight"] + 0.01
    save_file(tensors, changed / "model.safetensors")
    (changed / "config.json").write_text((tiny_llama_dir / "config.json").read_text())
    _tool("analyze_layers")(["--base", str(tiny_llama_dir), "--adapted", f"cpt={changed}", "--output", str(tmp_path / "out")])
    result = json.loads((tmp_path / "out" / "analysis.json").read_text())["comparisons"]["cpt"]
    top = max(result["tensors"], key=lambda t: t["relative"])
    assert top["name"] == "model.layers.1.mlp.up_proj.weight"
    assert [t["name"] for t in result["tensors"] if t["delta_norm"] > 0] == [top["name"]]
    assert (tmp_path / "out" / "heatmap_cpt.png").stat().st_size > 1000


def test_megatron_checkpoint_is_exported_on_the_way(tiny_llama_dir, shared_data, tmp_path):
    """HF -> Megatron (the converter's import) -> evaluate: exported on the way, same perplexity as the HF model."""
    import subprocess
    import sys

    from megatron_tibetan import checkpoint_dir
    from megatron_tibetan.evaluation import models
    from megatron_tibetan.evaluation.perplexity import perplexity

    mdir = tmp_path / "megatron"
    subprocess.run([sys.executable, str(ROOT / "tools" / "convert_checkpoint.py"), "import", "--hf", str(tiny_llama_dir),
                    "--output", str(mdir)], check=True, cwd=ROOT)
    assert checkpoint_dir.is_checkpoint_dir(mdir)
    model, tok, where = models.load(mdir, export_root=tmp_path / "exports")
    assert where.parent == tmp_path / "exports" and (where / ".complete").exists()
    assert models.hf_model_dir(mdir, tmp_path / "exports") == where  # cached: exported once
    lines = (shared_data / "eval" / "tatoeba.bo-en.bo").read_text(encoding="utf-8").splitlines()[:5]
    reference, ref_tok, _ = models.load(tiny_llama_dir)
    assert perplexity(model, tok, lines, progress=False).nll == pytest.approx(
        perplexity(reference, ref_tok, lines, progress=False).nll, rel=1e-5)
