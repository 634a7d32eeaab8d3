"""Every way a run is stopped saves it, through the real training command: a stop signal sent to the whole
process group (as Slurm, `timeout` and a terminal deliver it) after a periodic save exits 3 with the
signalled iteration saved and nothing partial left, and the resumed run ends on the uninterrupted run's
losses, bitwise; for CPT and SFT, TP1 and TP2 (two ranks started as srun starts them, in one process
group), a second SIGTERM during the save, and Ctrl-C (once: save; twice: stop at once)."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
STEPS = 14
SAVE_EVERY = 4  # a periodic save (which starts the checkpoint writer's helper processes) before the signal


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(config: str, run: Path, *overrides: str, ranks: int = 1) -> list[subprocess.Popen]:
    """The training command in a process group of its own (rank 0 leads it; other ranks join it)."""
    run.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "megatron_tibetan.train", "--config", config, f"checkpoint.dir={run / 'ckpt'}",
               f"logging.dir={run}", "logging.interval=1", "logging.progress=false", "validation.interval=null",
               *overrides]
    port = free_port()
    procs: list[subprocess.Popen] = []
    for rank in range(ranks):
        env = {**ENV, "RANK": str(rank), "WORLD_SIZE": str(ranks), "LOCAL_RANK": str(rank), "MASTER_ADDR": "127.0.0.1",
               "MASTER_PORT": str(port)} if ranks > 1 else ENV
        log = open(run / f"rank{rank}.log", "a")
        group = {"process_group": 0 if rank == 0 else procs[0].pid}
        procs.append(subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, **group))
    return procs


def finish(procs, timeout=600) -> list[int]:
    return [p.wait(timeout=timeout) for p in procs]


def wait_log(run: Path, pattern: str, procs, timeout=600) -> re.Match:
    deadline = time.time() + timeout
    while time.time() < deadline:
        text = (run / "rank0.log").read_text(errors="replace")
        if found := re.search(pattern, text):
            return found
        assert all(p.poll() is None for p in procs), text[-3000:]
        time.sleep(0.05)
    raise AssertionError(f"{pattern!r} not in {run / 'rank0.log'}")


def losses(run: Path) -> list[tuple[int, float]]:
    rows = [json.loads(line) for line in open(run / "metrics.jsonl")]
    return [(r["step"], r["loss"]) for r in rows if r.get("split", "train") == "train"]


def tracker(run: Path) -> int:
    return int((run / "ckpt" / "latest_checkpointed_iteration.txt").read_text())


@pytest.fixture(scope="module")
def data(tmp_path_factory, shared_data):
    """A small CPT dataset, and SFT data from the Tatoeba pairs."""
    from train_data import write_dataset

    work = tmp_path_factory.mktemp("stop_signals")
    cpt = write_dataset(work / "nanhai_text_document", 600)
    tatoeba = shared_data / "eval" / "tatoeba.bo-en"
    done = subprocess.run([sys.executable, "tools/prepare_sft.py", "--pairs", f"en={tatoeba}.en,{tatoeba}.bo",
                           "--tokenizer", "smollm2", "--output", str(work / "sft"), "--max-length", "256", "--no-progress"],
                          cwd=ROOT, env=ENV, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return {"cpt": cpt, "sft": str(work / "sft"), "work": work}


def case(data, kind: str, tp: int) -> tuple[str, list[str]]:
    common = [f"train.iterations={STEPS}", f"checkpoint.save_interval={SAVE_EVERY}", "logging.tensorboard=false"]
    if kind == "cpt":
        return "configs/cpt/tiny-cpu.yaml", [f"data.paths=[{data['cpt']}]", f"data.cache_dir={data['work'] / 'cache'}",
                                             "schedule.warmup_iterations=2", f"parallel.tensor_model_parallel_size={tp}",
                                             *common]
    hf = yaml.safe_load((ROOT / "configs" / "cpt" / "tiny-cpu.yaml").read_text())["model"]["hf_config"]
    return "configs/sft/tiny-cpu.yaml", [f"data.paths=[{data['sft']}]", "data.seq_length=256", "checkpoint.load=null",
                                         "checkpoint.finetune=false", "model.hf_config=" + yaml.safe_dump(hf, default_flow_style=True).strip(), "train.epochs=null",
                                         "batch.global_batch_size=2", f"parallel.tensor_model_parallel_size={tp}", *common]


def stop_and_resume(data, kind: str, tp: int, signals: int) -> dict:
    """An uninterrupted run; a run signalled (as a group, ``signals`` times) after a periodic save; its resume."""
    config, overrides = case(data, kind, tp)
    name = f"{kind}_tp{tp}_x{signals}"
    reference, stopped = data["work"] / f"{name}_reference", data["work"] / f"{name}_stopped"
    full = start(config, reference, *overrides, ranks=tp)
    procs = start(config, stopped, *overrides, ranks=tp)
    wait_log(stopped, rf"step={SAVE_EVERY + 2} ", procs)
    os.killpg(procs[0].pid, signal.SIGTERM)
    if signals > 1:  # again while the ranks save (a scheduler's KillWait, a user's impatience)
        wait_log(stopped, r"received: saving at iteration", procs)
        os.killpg(procs[0].pid, signal.SIGTERM)
    codes = finish(procs)
    log = (stopped / "rank0.log").read_text()
    at = int(re.search(r"SIGTERM received: saving at iteration (\d+)", log).group(1))
    partial = sorted(p.name for p in (stopped / "ckpt").glob(".*partial"))
    saved = tracker(stopped)
    resumed = finish(start(config, stopped, *overrides, ranks=tp))
    return {"codes": codes, "at": at, "saved": saved, "partial": partial, "resumed": resumed, "log": log,
            "reference": finish(full), "losses": losses(stopped), "full": losses(reference)}


CASES = [("cpt", 1, 1), ("sft", 1, 1), ("cpt", 2, 2)]


@pytest.fixture(scope="module")
def stopped(data):
    with ThreadPoolExecutor(max_workers=2) as pool:  # two runs at a time on the two cores
        futures = {c: pool.submit(stop_and_resume, data, *c) for c in CASES}
        return {c: f.result(timeout=1500) for c, f in futures.items()}


@pytest.mark.parametrize("kind,tp,signals", CASES, ids=["cpt-tp1", "sft-tp1", "cpt-tp2-twice"])
def test_a_stop_signal_to_the_whole_group_saves_the_step_and_resumes_exactly(stopped, kind, tp, signals):
    out = stopped[(kind, tp, signals)]
    assert out["codes"] == [3] * tp, out["log"][-3000:]
    assert SAVE_EVERY < out["at"] < STEPS and out["saved"] == out["at"]  # the signalled step, not the last periodic
    assert out["partial"] == [] and "Traceback" not in out["log"]
    assert out["resumed"] == out["reference"] == [0] * tp
    assert out["losses"] == out["full"]  # every step once, each loss bitwise the uninterrupted run's


def test_ctrl_c_saves_once_and_a_second_one_stops_at_once(data):
    config, overrides = case(data, "cpt", 1)
    run = data["work"] / "ctrl_c"
    procs = start(config, run, *overrides)
    wait_log(run, rf"step={SAVE_EVERY + 1} ", procs)
    os.killpg(procs[0].pid, signal.SIGINT)  # what a terminal sends its foreground group on Ctrl-C
    assert finish(procs) == [3]
    log = (run / "rank0.log").read_text()
    at = int(re.search(r"SIGINT received: saving at iteration (\d+)", log).group(1))
    assert tracker(run) == at and "Traceback" not in log

    overrides = [o.replace(f"train.iterations={STEPS}", "train.iterations=100000") for o in overrides]
    procs = start(config, run, *overrides)
    wait_log(run, rf"step={at + 2} ", procs)
    os.killpg(procs[0].pid, signal.SIGINT)
    wait_log(run, rf"SIGINT received: saving at iteration (?!{at}\b)", procs)  # the second run's stop-time save
    os.killpg(procs[0].pid, signal.SIGINT)  # while it saves (sent at once, the two would arrive as one)
    assert finish(procs) == [130]
    log = (run / "rank0.log").read_text()
    assert "interrupted: a second Ctrl-C: stopped without saving" in log and "Traceback" not in log
