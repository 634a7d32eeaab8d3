"""Checkpoints a user can trust on a shared cluster, through the real commands on the tiny config: a damaged
newest iteration is named and skipped (or refused with checkpoint.strict_load), a second run on a held
directory stops at once naming the holder and a dead holder's lock is taken over, a save into a full file
system leaves nothing partial and the previous checkpoint loadable, and a killed data preparation leaves
nothing under its final name."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
STEPS = 12


def command(run: Path, data: str, *overrides: str) -> list[str]:
    return [sys.executable, "-m", "megatron_tibetan.train", "--config", "configs/cpt/tiny-cpu.yaml",
            f"data.paths=[{data}]", f"data.cache_dir={run.parent / 'cache'}", f"checkpoint.dir={run / 'ckpt'}",
            f"logging.dir={run}", "logging.interval=1", "logging.progress=false", "logging.tensorboard=false",
            "validation.interval=null", "schedule.warmup_iterations=2", f"train.iterations={STEPS}",
            "checkpoint.save_interval=4", "checkpoint.keep_last=null", *overrides]


def train(run: Path, data: str, *overrides: str, timeout=600) -> subprocess.CompletedProcess:
    return subprocess.run(command(run, data, *overrides), cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=timeout)


def losses(run: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in open(run / "metrics.jsonl")]
    return {r["step"]: r["loss"] for r in rows if r.get("split", "train") == "train"}


def no_traceback(result):
    assert "Traceback" not in result.stderr + result.stdout, result.stderr[-3000:]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from train_data import write_dataset

    work = tmp_path_factory.mktemp("trust")
    return {"cpt": write_dataset(work / "nanhai_text_document", 600), "work": work}


@pytest.fixture(scope="module")
def reference(data):
    run = data["work"] / "reference"
    done = train(run, data["cpt"])
    assert done.returncode == 0, done.stderr[-3000:]
    return run


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_a_damaged_newest_iteration_is_named_and_the_previous_one_resumes(data, reference, damage):
    run = data["work"] / f"damaged_{damage}"
    shutil.copytree(reference / "ckpt", run / "ckpt")
    shutil.copy(reference / "metrics.jsonl", run / "metrics.jsonl")
    newest = run / "ckpt" / f"iter_{STEPS:07d}"
    victim = max((p for p in newest.glob("*.distcp")), key=lambda p: p.stat().st_size)
    size = victim.stat().st_size
    with open(victim, "r+b") as f:
        if damage == "truncate":
            f.truncate(size // 2)
        else:
            f.seek(size // 3)
            byte = f.read(1)
            f.seek(size // 3)
            f.write(bytes([byte[0] ^ 0xFF]))
    expected = f"{size // 2} bytes, the manifest says {size}" if damage == "truncate" else "CRC-32"

    export = subprocess.run([sys.executable, "tools/convert_checkpoint.py", "export", "--megatron", str(run / "ckpt"),
                             "--output", str(run / "hf")], cwd=ROOT, env=ENV, capture_output=True, text=True)
    assert export.returncode != 0 and str(victim) in export.stderr and expected in export.stderr, export.stderr[-2000:]
    no_traceback(export)
    strict = train(run, data["cpt"], "checkpoint.strict_load=true")
    assert strict.returncode == 2 and str(victim) in strict.stderr and expected in strict.stderr, strict.stderr[-3000:]
    no_traceback(strict)

    resumed = train(run, data["cpt"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    out = resumed.stdout + resumed.stderr
    assert f"skipping iter_{STEPS:07d}" in out and str(victim) in out and expected in out
    assert f"start at iteration {STEPS - 4} from" in out
    no_traceback(resumed)
    assert newest.is_dir()  # never deleted
    assert losses(run)[STEPS] == losses(reference)[STEPS]  # steps 9..12 again: the uninterrupted run's final loss


def test_one_writer_per_checkpoint_directory(data):
    run = data["work"] / "locked"
    first = subprocess.Popen(command(run, data["cpt"], "train.iterations=100000", "checkpoint.save_interval=null"),
                             cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 300
    while not (run / "metrics.jsonl").is_file() or not (run / "metrics.jsonl").read_text().count("\n") >= 2:
        assert time.time() < deadline and first.poll() is None
        time.sleep(0.2)
    started = time.time()
    second = train(run, data["cpt"])
    assert second.returncode == 2 and time.time() - started < 60, second.stderr[-3000:]
    assert f"pid {first.pid}" in second.stderr and "holds" in second.stderr
    no_traceback(second)

    first.send_signal(signal.SIGKILL)  # gone without releasing its lock
    first.wait()
    taken = train(run, data["cpt"], "train.iterations=3")
    assert taken.returncode == 0, taken.stderr[-3000:]
    assert f"taking over the lock of pid {first.pid}" in taken.stdout + taken.stderr
    assert not (run / "ckpt" / ".lock").exists()  # released at the end


def test_a_save_into_a_full_file_system_leaves_the_previous_checkpoint(data, reference, tmp_path):
    """A tmpfs with room for one checkpoint (where the machine allows mounting one), else a file-size limit:
    the second save fails with a clear line and status 4, nothing partial, iteration 4 loads."""
    iteration = reference / "ckpt" / "iter_0000004"
    one = sum(p.stat().st_size for p in iteration.rglob("*") if p.is_file())
    mount = tmp_path / "small"
    mount.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={int(one * 1.5)}", "tmpfs", str(mount)],
                             capture_output=True).returncode == 0
    try:
        run = mount / "run"
        if mounted:
            done = train(run, data["cpt"])
        else:
            import resource

            limit = max(p.stat().st_size for p in iteration.rglob("*") if p.is_file()) // 2
            shutil.copytree(reference / "ckpt", run / "ckpt", ignore=lambda d, names: [n for n in names if n > "iter_0000004"])
            (run / "ckpt" / "latest_checkpointed_iteration.txt").write_text("4\n")
            done = subprocess.run(command(run, data["cpt"]), cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600,
                                  preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit)))
        assert done.returncode == 4, done.stderr[-3000:]
        assert re.search(r"saving iteration 8 into .* failed: .* \(\d+ MB free on its file system\)", done.stderr), \
            done.stderr[-2000:]
        assert "previous checkpoint (iteration 4) is untouched" in done.stderr
        no_traceback(done)
        ckpt = run / "ckpt"
        assert not list(ckpt.glob(".*partial")) and (ckpt / "latest_checkpointed_iteration.txt").read_text().strip() == "4"
        export = subprocess.run([sys.executable, "tools/convert_checkpoint.py", "export", "--megatron", str(ckpt),
                                 "--output", str(tmp_path / "hf")], cwd=ROOT, env=ENV, capture_output=True, text=True)
        assert export.returncode == 0, export.stderr[-2000:]  # the previous iteration loads (and verifies)
    finally:
        if mounted:
            subprocess.run(["umount", str(mount)])


@pytest.mark.parametrize("tool", ["preprocess", "prepare_sft"])
def test_a_killed_data_preparation_leaves_nothing_under_its_final_name(tmp_path, shared_data, tool):
    prefix = tmp_path / "out"
    if tool == "preprocess":
        args = ["tools/preprocess_data.py", "--input", str(shared_data / "mono" / "kangyur.bo.txt.xz"), "--output-prefix",
                str(prefix), "--tokenizer", "smollm2", "--append-eod"]
    else:
        par = shared_data / "parallel"
        args = ["tools/prepare_sft.py", "--pairs", f"en={par / 'openpecha.bo-en.en.xz'},{par / 'openpecha.bo-en.bo.xz'}",
                "--tokenizer", "smollm2", "--output", str(prefix), "--max-length", "512"]
    proc = subprocess.Popen([sys.executable, *args], cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(10)  # well into the work (each takes minutes in all)
    assert proc.poll() is None
    proc.kill()
    proc.wait()
    final = [p.name for p in tmp_path.iterdir() if p.name.startswith("out") and ".partial" not in p.name]
    assert final == [], final
