"""SFT through the training loop (tests/train_sft.py, one launch): the packed loss equals per-example
`transformers` losses for SmolLM2's and Qwen2.5's templates, resume mid-epoch is exact, and a model
fine-tuned from a tiny CPT run on 32 pairs translates every one back exactly through
tools/convert_checkpoint.py export and tools/evaluate.py (chat template, prompt, generation)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "PYTHONWARNINGS": "ignore"}


@pytest.fixture(scope="module")
def sft(tmp_path_factory, shared_data):
    work = tmp_path_factory.mktemp("sft_train")
    with open(work / "train_sft.log", "w") as log:
        done = subprocess.run([sys.executable, "tests/train_sft.py", str(work)], cwd=ROOT, env=ENV, stdout=log,
                              stderr=subprocess.STDOUT, timeout=1500)
    assert done.returncode == 0, (work / "train_sft.log").read_text()[-4000:]
    return json.loads((work / "sft.json").read_text()), work


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_packed_loss_equals_per_example_transformers_losses(sft, family):
    """Llama with SmolLM2's ChatML, Qwen2 with Qwen2.5's (and a padded vocabulary: 151,665 -> 151,680 rows)."""
    case = sft[0]["exact"][family]
    assert case["examples_in_pack"] >= 3
    assert case["count"] == case["reference_count"]  # exactly the answer tokens, nothing else
    assert case["loss"] == pytest.approx(case["reference"], rel=1e-6)


def test_resume_mid_epoch_equals_the_uninterrupted_run(sft):
    out = sft[0]["resume"]
    assert out["first"] == {"stopped_by_signal": True, "iteration": 6}
    assert len(out["full"]) == 10 and out["resumed"] == out["full"][6:]  # identical floats, data position included


def test_memorised_pairs_translate_back_through_export_and_evaluate(sft, tmp_path):
    """Fails whenever training and inference disagree anywhere: data normalisation, template, masking,
    tokenisation, export, the evaluation prompt or generation. Every line must come back exactly."""
    from megatron_tibetan.text import normalize
    from megatron_tibetan.text.readers import read_lines

    out = sft[0]["memorise"]
    losses = out["losses"]
    assert out["cpt_losses"][-1] < out["cpt_losses"][0] and losses[-1] < 0.05 * losses[0], losses
    hf = tmp_path / "hf"
    exported = subprocess.run([sys.executable, "tools/convert_checkpoint.py", "export", "--megatron", out["checkpoint"],
                               "--output", str(hf)], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert exported.returncode == 0, exported.stderr[-4000:]
    result = subprocess.run([sys.executable, "tools/evaluate.py", "--model", f"tiny={hf}", "--translate",
                             f"en={out['sources']}", "--ref", out["references"], "--output", str(tmp_path / "eval"),
                             "--max-new-tokens", "200", "--batch-size", "16", "--phrasings", "0,2"],
                            cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]
    hyps = read_lines(tmp_path / "eval" / "tiny.en-bo.greedy.hyp")
    refs = [normalize(line) for line in read_lines(out["references"])]
    assert hyps == refs, [(h, r) for h, r in zip(hyps, refs) if h != r][:3]
    report = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert report["models"]["tiny"]["en-bo.greedy"]["chrf"] == 100.0
    spread = report["phrasings"]["tiny"]["en-bo.greedy"]  # another phrasing, never trained: reported beside it
    other = report["models"]["tiny"]["en-bo.p2.greedy"]["chrf"]
    assert spread["chrf"] == {"0": 100.0, "2": other} and spread["min"] == min(100.0, other)
    assert (tmp_path / "eval" / "tiny.en-bo.p2.greedy.hyp").is_file() and "per prompt phrasing" in \
        (tmp_path / "eval" / "report.md").read_text()
