"""SFT through the training loop (tests/train_sft.py, one launch): the packed loss equals per-example
`transformers` losses for SmolLM2's and Qwen2.5's templates, resume mid-epoch is exact, and a model
fine-tuned on 32 pairs translates them back through tools/evaluate.py (export, chat template, generation)."""

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


def test_memorised_pairs_translate_back_through_evaluate(sft, tmp_path):
    from megatron_tibetan.text import normalize
    from megatron_tibetan.text.readers import read_lines

    out = sft[0]["memorise"]
    losses = out["losses"]
    assert losses[-1] < 0.05 * losses[0], losses
    result = subprocess.run([sys.executable, "tools/evaluate.py", "--model", f"tiny={out['checkpoint']}",
                             "--translate", f"en={out['sources']}", "--ref", out["references"], "--output",
                             str(tmp_path), "--max-new-tokens", "200", "--batch-size", "16"],
                            cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]
    hyps = read_lines(tmp_path / "tiny.en-bo.greedy.hyp")
    refs = [normalize(line) for line in read_lines(out["references"])]
    exact = sum(h == r for h, r in zip(hyps, refs))
    metrics = json.loads((tmp_path / "metrics.json").read_text())["models"]["tiny"]["en-bo.greedy"]
    assert exact >= 30 and metrics["chrf"] > 95, (exact, metrics["chrf"], list(zip(hyps, refs))[:3])
