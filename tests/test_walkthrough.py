"""The walk-through runs as written: every command of docs/walkthrough.md's `walkthrough` blocks, taken from
the page (not copied here), in order, in a fresh working directory laid out like a clone (tools/, configs/,
slurm/ and ../shared beside it), each succeeding and creating the outputs it names (--output, --output-prefix,
a training run's checkpoint.dir). The `walkthrough-long` blocks (SmolLM2-135M, TP2 x PP2, sharded
preprocessing) run too with MEGATRON_TIBETAN_LONG=1 (make test-long). Then what a user meets next: the CPT
command typed again (with another sequence length) names what differs from the run in its directory, and
says in one line that there is nothing to train."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

from megatron_tibetan import checkpoint_dir
from megatron_tibetan.config import load_config

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "walkthrough.md"
BLOCK = re.compile(r"^```sh (walkthrough(?:-long)?)\n(.*?)^```", re.M | re.S)
LONG = os.environ.get("MEGATRON_TIBETAN_LONG") == "1"


def documented_commands(text: str) -> list[tuple[str, str]]:
    """(kind, command) for every command of the page's marked blocks, in order; a trailing backslash
    continues a command on the next line."""
    commands = []
    for kind, body in BLOCK.findall(text):
        for command in re.sub(r"\\\n\s*", "", body).splitlines():
            if command.strip() and not command.lstrip().startswith("#"):
                commands.append((kind, command.strip()))
    return commands


def named_outputs(command: str, cwd: Path) -> list[Path]:
    """The outputs a command names: --output (a directory, or a prefix as tools/prepare_sft.py takes one: its
    _stats.json), --output-prefix (its _stats.json), a training run's tracker."""
    words = shlex.split(command)
    outputs = []
    if "--output" in words:
        named = cwd / words[words.index("--output") + 1]
        outputs.append(named if "tools/prepare_sft.py" not in words else Path(f"{named}_stats.json"))
    if "--output-prefix" in words:
        outputs.append(Path(f"{cwd / words[words.index('--output-prefix') + 1]}_stats.json"))
    if "megatron_tibetan.train" in words:
        at = words.index("--config")
        cfg = load_config(cwd / words[at + 1], [w for w in words[at + 2:] if "=" in w])
        outputs.append(cwd / cfg.checkpoint.dir / checkpoint_dir.TRACKER)
    return outputs


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, shared_data):
    """A clone's layout: the repository's tools, configs and slurm scripts, ../shared beside it."""
    base = tmp_path_factory.mktemp("walkthrough")
    repo = base / "repo"
    repo.mkdir()
    for name in ("tools", "configs", "slurm"):
        (repo / name).symlink_to(ROOT / name)
    (base / "shared").mkdir()
    (base / "shared" / "data").symlink_to(shared_data)
    return repo


def _run(command: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    return subprocess.run(["bash", "-c", command], cwd=cwd, env=env, capture_output=True, text=True)


def test_documented_commands_are_found():
    commands = documented_commands(PAGE.read_text())
    kinds = {kind for kind, _ in commands}
    assert kinds == {"walkthrough", "walkthrough-long"}
    assert any("tools/prepare_sft.py" in c and "--exclude" in c for _, c in commands)  # continuation lines joined


def test_walkthrough_runs_as_written(workdir):
    times = []
    for kind, command in documented_commands(PAGE.read_text()):
        if kind == "walkthrough-long" and not LONG:
            continue
        start = time.perf_counter()
        result = _run(command, workdir)
        times.append({"command": command, "seconds": round(time.perf_counter() - start, 1)})
        assert result.returncode == 0, f"{command}\nexit {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        missing = [str(p) for p in named_outputs(command, workdir) if not p.exists()]
        assert not missing, f"{command}: did not create {missing}"
    (workdir / "runs" / "walkthrough_times.json").write_text(json.dumps(times, indent=2) + "\n")
    print("\n".join(f"{t['seconds']:7.1f} s  {t['command']}" for t in times))

    # the first training command typed again, with another sequence length: the directory's run differs
    # (named), and it is already at train.iterations (said in one line, nothing trained)
    cpt = next(c for _, c in documented_commands(PAGE.read_text()) if "configs/cpt/tiny-cpu.yaml" in c)
    metrics = workdir / "runs" / "cpt" / "tiny-cpu" / "metrics.jsonl"
    steps_before = metrics.read_text().count('"step"')
    again = _run(f"{cpt} data.seq_length=64", workdir)
    assert again.returncode == 0, again.stderr
    assert "written by a run with another config (data.seq_length 128 -> 64)" in again.stdout
    assert "nothing to train: runs/cpt/tiny-cpu/checkpoints already holds iteration 20" in again.stdout
    assert "raise train.iterations" in again.stdout
    assert metrics.read_text().count('"step"') == steps_before
