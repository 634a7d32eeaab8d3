"""The training loop on real Tibetan (Nanhai), CPU, gloo: loss falls, parallel layouts agree, resume is exact,
a kill during a save leaves the previous checkpoint loadable, SIGTERM saves and stops.

Three launches (each pays megatron-core's import): tests/train_single.py killsave and main (one process),
tests/train_parallel.py under torchrun with 4 ranks.
"""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "PYTHONWARNINGS": "ignore"}


def _launch(args: list[str], log: Path, timeout: int) -> tuple[int, str]:
    """(return code, output tail). Output goes to a file, not a pipe: a process killed mid-save leaves
    dist_checkpointing's helper process behind holding its stdout; its own session lets us end that too."""
    with open(log, "w") as out:
        proc = subprocess.Popen(args, cwd=ROOT, env=ENV, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            proc.wait(timeout=timeout)
        finally:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    return proc.returncode, log.read_text()[-4000:]


@pytest.fixture(scope="module")
def single(tmp_path_factory, shared_data):
    work = tmp_path_factory.mktemp("train_single")
    rc, log = _launch([sys.executable, "tests/train_single.py", str(work), "killsave"], work / "killsave.log", 300)
    assert rc == -signal.SIGKILL, log
    rc, log = _launch([sys.executable, "tests/train_single.py", str(work), "main"], work / "main.log", 900)
    assert rc == 0, log
    return json.loads((work / "single.json").read_text()), work


def test_loss_falls_on_real_tibetan(single):
    out, work = single
    losses = [r["loss"] for r in out["full"]]
    assert len(losses) == 8 and all(math.isfinite(x) for x in losses)
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.5, losses
    valid = [r["loss"] for r in out["full_valid"]]
    assert len(valid) == 2 and valid[1] < valid[0] - 0.5, valid
    rows = [json.loads(line) for line in open(work / "full" / "metrics.jsonl")]
    train_rows = [r for r in rows if r["split"] == "train"]
    assert [r["step"] for r in train_rows] == list(range(1, 9))
    for key in ("loss", "lr", "grad_norm", "tokens_per_s"):
        assert all(isinstance(r[key], float) for r in train_rows), key
    assert any((work / "full" / "tensorboard").glob("events.out.tfevents.*"))


def test_sigterm_saves_and_resume_is_bitwise(single):
    out, _ = single
    assert out["sigterm_first"] == {"stopped_by_signal": True, "iteration": 3, "latest": "iter_0000003"}
    resumed = out["sigterm_resumed"]
    assert [r["step"] for r in resumed] == [4, 5, 6, 7, 8]
    assert resumed == out["full"][3:]  # loss, lr, grad norm, data position: identical floats


def test_kill_during_save_leaves_previous_checkpoint(single):
    out, _ = single
    on_disk = out["kill_on_disk"]
    assert on_disk["latest"] == "iter_0000002"  # the save at 4 never completed
    assert ".iter_0000004.partial" in on_disk["entries"] and "iter_0000004" not in on_disk["entries"]
    assert out["kill_resumed"] == out["full"][2:]  # loaded iteration 2 and went on exactly
    assert ".iter_0000004.partial" not in out["kill_after"]
    assert "iter_0000008" in out["kill_after"] and "iter_0000002" not in out["kill_after"]  # keep_last=2


def test_parallel_layouts_and_resharded_resume(tmp_path, shared_data):
    torchrun = Path(sys.executable).with_name("torchrun")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    rc, log = _launch([str(torchrun), "--nproc_per_node", "4", "--master_port", str(port), "tests/train_parallel.py",
                       str(tmp_path)], tmp_path / "torchrun.log", 600)
    assert rc == 0, log
    out = json.loads((tmp_path / "parallel.json").read_text())
    reference = out["tp1pp1"]
    assert len(reference) == 4 and reference[-1] < reference[0]
    for name in ("tp2", "pp2", "tp2pp2"):
        assert out[name] == pytest.approx(reference, rel=2e-5, abs=0), name
    # TP2 x PP2 (DP1) stopped at 2, resumed as TP1 PP1 (DP4) and TP2 (DP2)
    for name in ("resume_tp1pp1", "resume_tp2"):
        assert out[name] == pytest.approx(out["tp2pp2"][2:], rel=2e-5, abs=0), name


def test_nonfinite_loss_is_skipped_or_stops(single):
    out, _ = single
    skip = out["nan_skip"]
    assert [r["step"] for r in skip] == [1, 2, 3] and [r["skipped"] for r in skip] == [False, True, False]
    assert [r["skipped_steps"] for r in skip] == [0, 1, 1]
    assert math.isnan(skip[1]["loss"]) and math.isfinite(skip[2]["loss"])
    assert skip[2]["lr"] == skip[1]["lr"]  # no update, so the schedule did not advance
    assert "non-finite loss nan at iteration 2 (samples 4..7 of the training dataset)" in out["nan_stop"]


def test_bf16_weights_only_load_keeps_the_loaded_weights(single):
    out, _ = single
    trained = out["full"][-1]["loss"]  # ~9.2 after 8 steps; a random model is at ~10.9
    assert [r["step"] for r in out["bf16_finetune"]] == [1, 2, 3]
    assert all(r["loss"] < trained + 0.3 for r in out["bf16_finetune"]), (trained, out["bf16_finetune"])


def test_resolved_config_saved_with_run_and_checkpoint(single):
    out, _ = single
    assert out["config_saved"] == {"run": True, "checkpoint": True}


def test_keep_last_never_prunes_the_start_checkpoint(single):
    out, _ = single
    assert out["protect_after"] == ["iter_0000000", "iter_0000004"]  # iter_0000002 pruned, the start kept


def test_throughput_counts_only_step_time(single):
    """Logged at 3, 6 and 8 (a partial interval of 2), validation at 2, 4, 6, 8 and a save at 4 in between:
    tokens/s and step time match the steps' own durations."""
    out, _ = single
    logged, durations, tokens = out["throughput"], out["step_durations"], out["step_tokens"]
    assert [r["step"] for r in logged] == [3, 6, 8]
    for record, (first, last) in zip(logged, [(0, 3), (3, 6), (6, 8)]):
        steps = durations[first:last]
        assert record["step_time_s"] == pytest.approx(sum(steps) / len(steps), rel=0.1), record
        assert record["tokens_per_s"] == pytest.approx(tokens * len(steps) / sum(steps), rel=0.1), record


def test_changed_schedule_on_resume_is_reported(single):
    out, _ = single
    kept, override = out["schedule_kept"], out["schedule_override"]
    assert any("max_lr is 0.001" in w and "but 0.002 in the config" in w and "kept" in w for w in kept["warnings"]), kept
    assert any("lr_decay_steps is 8" in w and "but 10" in w for w in kept["warnings"]), kept
    assert kept["lr"] == pytest.approx(1e-4)  # the checkpoint's schedule had decayed to its min_lr at step 8
    assert any("config's value applies" in w for w in override["warnings"]) and override["lr"] > 2e-4
