"""The checkpoint directory layout (Megatron-LM's tracker file, the legacy ``latest``, pruning) and the
user-facing errors of the tools that take checkpoint and data paths."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from megatron_tibetan import checkpoint_dir as cd

ROOT = Path(__file__).resolve().parents[1]


def make_iterations(root: Path, *iterations: int) -> None:
    for i in iterations:
        cd.iteration_dir(root, i).mkdir(parents=True)


def test_tracker_is_megatron_lm_s_and_the_legacy_pointer_is_read(tmp_path):
    make_iterations(tmp_path, 0, 40)
    cd.write_tracker(tmp_path, 40)
    assert (tmp_path / "latest_checkpointed_iteration.txt").read_text() == "40\n"  # what Megatron-LM writes
    assert cd.latest_iteration_dir(tmp_path) == tmp_path / "iter_0000040"

    legacy = tmp_path / "legacy"
    make_iterations(legacy, 3)
    (legacy / "latest").write_text("iter_0000003\n")  # this project's earlier pointer
    assert cd.has_checkpoint(legacy) and cd.latest_iteration_dir(legacy) == legacy / "iter_0000003"
    make_iterations(legacy, 5)
    cd.write_tracker(legacy, 5)  # the next save moves to Megatron-LM's tracker and drops the old pointer
    assert not (legacy / "latest").exists() and cd.latest_iteration_dir(legacy).name == "iter_0000005"


def test_tracker_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no latest_checkpointed_iteration.txt"):
        cd.latest_iteration_dir(tmp_path)
    (tmp_path / "latest_checkpointed_iteration.txt").write_text("seven")
    with pytest.raises(ValueError, match="latest_checkpointed_iteration.txt: expected an iteration number"):
        cd.latest_iteration_dir(tmp_path)
    (tmp_path / "latest_checkpointed_iteration.txt").write_text("7")
    with pytest.raises(FileNotFoundError, match="names iter_0000007, which does not exist"):
        cd.latest_iteration_dir(tmp_path)
    with pytest.raises(FileNotFoundError, match="model.json not found"):
        cd.read_model_spec(tmp_path)
    (tmp_path / "model.json").write_text('{"family": "llama"}')
    with pytest.raises(KeyError, match="missing key.*'hf_config'"):
        cd.read_model_spec(tmp_path)


def test_prune_keeps_the_newest_the_tracked_and_the_protected(tmp_path):
    make_iterations(tmp_path, 0, 2, 4, 6)
    cd.write_tracker(tmp_path, 6)
    removed = cd.prune(tmp_path, keep_last=1, protect=(tmp_path / "iter_0000000",))
    assert sorted(p.name for p in removed) == ["iter_0000002", "iter_0000004"]
    assert sorted(p.name for p in tmp_path.glob("iter_*")) == ["iter_0000000", "iter_0000006"]


def run_tool(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("args, message", [
    (["tools/convert_checkpoint.py", "export", "--megatron", "no/such/dir", "--output", "OUT"],
     "error: no/such/dir/model.json not found"),
    (["tools/convert_checkpoint.py", "import", "--hf", "no/such/hf", "--output", "OUT"],
     "error: HF source 'no/such/hf'"),
    (["tools/evaluate.py", "--model", "no/such/model", "--ppl", "../shared/data/eval/flores200.dev.bo", "--output", "OUT"],
     "error: --model no/such/model: neither an HF model directory"),
    (["tools/evaluate.py", "--hyp", "no/such.hyp", "--ref", "no/such.bo", "--output", "OUT"],
     "error: no/such.bo: no such file"),
])
def test_tools_report_user_mistakes_in_one_line(args, message, tmp_path):
    result = run_tool(*[str(tmp_path / "out") if a == "OUT" else a for a in args])
    assert result.returncode != 0 and message in result.stderr, result.stderr[-2000:]
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
