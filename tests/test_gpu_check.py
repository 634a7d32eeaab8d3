"""benchmarks/gpu_check.sh --dry-run: the GPU path check's every stage on the CPU with tiny sizes (gloo), so the
one call on a GPU machine runs code the suite has run. One launch of the script; its JSON is checked here."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    out, work = tmp_path_factory.mktemp("gpu_check_out"), tmp_path_factory.mktemp("gpu_check_work")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHON": sys.executable, "OUT": str(out)}
    proc = subprocess.run(["bash", "benchmarks/gpu_check.sh", "--dry-run", "--work", str(work)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads((out / "gpu_check.json").read_text()), proc.stdout, out


def test_every_stage_ran_and_outputs_written(dry_run):
    result, stdout, out = dry_run
    assert set(result["stages"]) == {"peak", "conversion", "throughput", "resume"}
    assert all(s["ok"] for s in result["stages"].values()), result["stages"]
    env = result["environment"]
    assert env["dry_run"] and env["device"] == "cpu" and env["megatron_core"]
    assert result["peak"]["flops"] > 0 and len(result["peak"]["times_ms"]) == 3
    assert (out / "gpu_check.png").stat().st_size > 0
    profile = (out / "gpu_check_profile.txt").read_text()
    assert all(f"{name} (one step" in profile for name in ("megatron_recompute_off", "transformers")), profile[:500]
    assert (out / "gpu_check.log").read_text().rstrip().endswith(stdout.rstrip().splitlines()[-1])
    last = stdout.rstrip().splitlines()[-15:]  # the table comes last
    assert last[0].startswith("device") and any(line.startswith("resume (dist. opt.)") for line in last), last


def test_conversion_equals_transformers(dry_run):
    c = dry_run[0]["conversion"]
    assert c["megatron_dtype_float32"] == "float32" and c["megatron_dtype_bfloat16"] == "bfloat16"
    assert c["float32"]["max_abs_diff"] <= 1e-4 * c["float32"]["logit_scale"] and c["float32"]["logit_scale"] > 0
    b = c["bfloat16"]
    assert 0 < b["relative_vs_float32"] <= 2 * b["transformers_relative_vs_float32"] + 1e-3  # bf16 rounds, within reason
    assert c["passed"]


def test_throughput_runs_the_projects_path_and_the_baseline(dry_run):
    t = dry_run[0]["throughput"]
    assert set(t["runs"]) == {"megatron_recompute_off", "megatron_recompute_selective", "transformers"}
    for name, r in t["runs"].items():
        assert len(r["step_times_s"]) == t["timed_steps"] == 2, name
        assert r["tokens_per_s"] == pytest.approx(t["tokens_per_step"] / r["step_time_s"])
        assert r["tflops"] > 0 and 0 < r["mfu"], name
        # warm-up, timed and one profiled step
        assert len(r["losses"]) == t["warmup_steps"] + t["timed_steps"] + 1 and all(math.isfinite(x) for x in r["losses"])
        assert r["top_kernels"] and sum(k["share"] for k in r["top_kernels"]) <= 1 + 1e-9, name
        assert abs(r["losses"][0] - math.log(t["model"]["vocab_size"])) < 0.5, name  # random init, random tokens
    for name in ("megatron_recompute_off", "megatron_recompute_selective"):
        r = t["runs"][name]
        assert r["core_attention"] == "SDPAttention"
        assert r["optimizer"].startswith("DistributedOptimizer")
        assert r["parameters"] == t["runs"]["transformers"]["parameters"]  # the same model shape
    # recompute replays the same arithmetic: the same losses from the same initial weights and data
    assert t["runs"]["megatron_recompute_off"]["losses"] == t["runs"]["megatron_recompute_selective"]["losses"]
    assert set(t["ratio_vs_transformers"]) == {"recompute_off", "recompute_selective"}
    assert set(dry_run[0]["targets"]) == {"mfu_at_least_0.45", "at_least_1.3x_transformers", "resume_equals_uninterrupted"}


def test_distributed_optimizer_resume_equals_uninterrupted(dry_run):
    r = dry_run[0]["resume"]
    assert r["optimizer"].startswith("DistributedOptimizer")
    assert r["stopped"] == {"by_signal": True, "at_iteration": 3}
    assert [s[0] for s in r["uninterrupted"]] == [1, 2, 3, 4, 5, 6]
    assert [s[0] for s in r["resumed"]] == [4, 5, 6]
    assert r["run_to_run_max_relative"] == 0.0  # the CPU is deterministic
    assert r["bitwise"] and r["resumed"] == r["uninterrupted"][3:] and r["passed"]
    losses = [s[1] for s in r["uninterrupted"]]
    assert len(set(losses)) == len(losses)  # the steps change the model: a lost optimizer state would show
