"""slurm/*.sh, tools/submit.py (submitit) and the preprocessing job array on a real Slurm: the one-node
cluster of slurm/local-cluster.sh (Debian's slurm-wlm), CPU only, gloo.

Every job is submitted at the start (the `jobs` fixture) and Slurm runs them side by side on the node's
cores; pre-emptions are sent from threads that watch the job logs. Each training job is the tiny config
shrunk by the same overrides (N steps), so all of them must reproduce the uninterrupted run's losses.
Skipped only where Slurm cannot be installed (not root, no apt-get, no registry).
"""

from __future__ import annotations

import json
import lzma
import math
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
N = 20  # optimizer steps of every training job
TIMEOUT = 900  # seconds any one scenario may take, requeues included
ENV = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore",
       "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"}


# --- the cluster and its jobs -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cluster():
    """The local cluster, started (and installed) by slurm/local-cluster.sh if needed."""
    if shutil.which("sinfo") and subprocess.run([str(ROOT / "slurm/local-cluster.sh"), "status"],
                                                capture_output=True).returncode == 0:
        return
    done = subprocess.run([str(ROOT / "slurm/local-cluster.sh"), "start"], capture_output=True, text=True)
    if done.returncode == 2:  # the script's "cannot be installed here"
        pytest.skip(f"Slurm cannot be installed here: {done.stderr.strip()}")
    assert done.returncode == 0, f"slurm/local-cluster.sh start failed:\n{done.stdout}\n{done.stderr}"


SUBMITTED: list[str] = []  # cancelled at the end if still queued (a failed test leaves nothing behind)
ABORT = threading.Event()  # set at the end: the scenario threads stop waiting


def sbatch(*args: str, cwd: Path) -> str:
    done = subprocess.run(["sbatch", "--parsable", *args], cwd=cwd, env=ENV, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    SUBMITTED.append(done.stdout.strip().split(";")[0])
    return SUBMITTED[-1]


def job_info(job_id: str) -> dict:
    """scontrol's record of a job (kept for MinJobAge, 300 s, after it ends): JobState, ExitCode, Restarts...;
    empty when scontrol does not answer (it times out on a very busy machine)."""
    out = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True).stdout
    return dict(re.findall(r"(\w+)=(\S*)", out))


FINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "BOOT_FAIL", "DEADLINE"}


def wait_gone(job_id: str, timeout: float = TIMEOUT) -> dict:
    """Wait until the job (through any requeue) has ended; its final record."""
    deadline = time.time() + timeout
    while (info := job_info(job_id)).get("JobState") not in FINAL:
        assert time.time() < deadline and not ABORT.is_set(), f"job {job_id} not ended after {timeout} s: {info}"
        time.sleep(1)
    return info


def wait_for(path: Path, pattern: str, timeout: float = TIMEOUT) -> re.Match:
    """The first match of ``pattern`` in the file at ``path`` (waiting for it to appear)."""
    deadline = time.time() + timeout
    while time.time() < deadline and not ABORT.is_set():
        if path.is_file():
            found = re.search(pattern, path.read_text(errors="replace"))
            if found:
                return found
        time.sleep(0.1)
    raise AssertionError(f"{pattern!r} not in {path} after {timeout} s")


def losses(run: Path) -> list[tuple[int, float]]:
    rows = [json.loads(line) for line in open(run / "metrics.jsonl")]
    return [(r["step"], r["loss"]) for r in rows if r.get("split", "train") == "train"]


def tiny(run: Path, data: Path, *extra: str) -> list[str]:
    """configs/cpt/tiny-cpu.yaml shrunk to N short steps on the small dataset, saving into ``run``."""
    return [str(ROOT / "configs/cpt/tiny-cpu.yaml"), f"data.paths=[{data}]", f"data.cache_dir={run}/cache",
            "data.seq_length=128", "batch.micro_batch_size=4", "batch.global_batch_size=8",
            "schedule.warmup_iterations=2", f"train.iterations={N}", "checkpoint.save_interval=null",
            f"checkpoint.dir={run}/ckpt", f"logging.dir={run}", "logging.interval=1", "logging.progress=false",
            "logging.tensorboard=false", "validation.interval=null", *extra]


CPU = ["--gpus-per-node=0", "--ntasks-per-node=1", "--cpus-per-task=1", "--time=15"]  # on the GPU defaults


def run_log(work: Path, name: str, job_id: str, restart: int) -> Path:
    return work / "logs" / f"{name}-{job_id}-restart{restart}.log"


# --- scenarios (each runs in a thread; Slurm runs the jobs) -------------------------------------------------

def reference(work: Path, data: Path, submitted: Future) -> dict:
    job = sbatch(*CPU, str(ROOT / "slurm/cpt.sh"), *tiny(work / "reference", data), cwd=work)
    submitted.set_result(job)
    return {"id": job, "info": wait_gone(job)}


def preempted(work: Path, data: Path) -> dict:
    """USR1 mid-run (the script requeues), then `scontrol requeue` mid-run (the scheduler requeues, as
    PreemptMode=REQUEUE does). Both signal every process of the job step; periodic saves before each have
    started the checkpoint writer's helper processes, which must outlive the signal for the stop-time save."""
    job = sbatch(*CPU, "--job-name=preempt", str(ROOT / "slurm/cpt.sh"),
                 *tiny(work / "preempted", data, "checkpoint.save_interval=2"), cwd=work)
    wait_for(run_log(work, "preempt", job, 0), r"step=3 ")
    subprocess.run(["scancel", "--signal=USR1", job], check=True)
    first = int(wait_for(run_log(work, "preempt", job, 1), r"start at iteration (\d+)").group(1))
    wait_for(run_log(work, "preempt", job, 1), rf"step={first + 3} ")
    subprocess.run(["scontrol", "requeue", job], check=True)
    return {"id": job, "info": wait_gone(job)}


def tensor_parallel(work: Path, data: Path) -> dict:
    job = sbatch("--gpus-per-node=0", "--ntasks=2", "--ntasks-per-node=2", "--cpus-per-task=1", "--time=15",
                 "--job-name=tp2", str(ROOT / "slurm/cpt.sh"),
                 *tiny(work / "tp2", data, "parallel.tensor_model_parallel_size=2"), cwd=work)
    return {"id": job, "info": wait_gone(job)}


def evaluation(work: Path, after: Future, flores: Path) -> dict:
    job = sbatch(*CPU, f"--dependency=afterok:{after.result(timeout=TIMEOUT)}", "--kill-on-invalid-dep=yes",
                 str(ROOT / "slurm/eval.sh"),
                 f"--model=tiny={work / 'reference' / 'ckpt'}", "--ppl", str(flores), "--limit", "4",
                 "--output", str(work / "eval"), cwd=work)
    return {"id": job, "info": wait_gone(job)}


def fine_tuning(work: Path, after: Future, parallel: Path) -> dict:
    """SFT (the same entry point, configs/sft/tiny-cpu.yaml) from the reference job's CPT checkpoint, on 120
    NTREX zh-bo pairs prepared here."""
    pairs = work / "sft_pairs"
    pairs.mkdir()
    for lang in ("zh", "bo"):
        with lzma.open(parallel / f"ntrex128.{lang}.xz", "rt", encoding="utf-8") as f:
            (pairs / f"ntrex.{lang}").write_text("".join(line for _, line in zip(range(120), f)), encoding="utf-8")
    done = subprocess.run([sys.executable, str(ROOT / "tools/prepare_sft.py"), "--pairs",
                           f"zh={pairs / 'ntrex.zh'},{pairs / 'ntrex.bo'}", "--tokenizer", "smollm2", "--output",
                           str(work / "sft_data"), "--valid-fraction", "0.1", "--max-length", "512", "--no-progress"],
                          env=ENV, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    run = work / "sft"
    job = sbatch(*CPU, f"--dependency=afterok:{after.result(timeout=TIMEOUT)}", "--kill-on-invalid-dep=yes",
                 str(ROOT / "slurm/sft.sh"), str(ROOT / "configs/sft/tiny-cpu.yaml"), f"data.paths=[{work / 'sft_data'}]",
                 f"checkpoint.load={work / 'reference' / 'ckpt'}", f"checkpoint.dir={run}/ckpt", f"logging.dir={run}",
                 "train.epochs=null", "train.iterations=3", "batch.global_batch_size=2", "checkpoint.save_interval=null",
                 "logging.interval=1", "logging.progress=false", "logging.tensorboard=false", "validation.interval=null",
                 cwd=work)
    return {"id": job, "info": wait_gone(job)}


def submitit_preempted(work: Path, data: Path) -> dict:
    """tools/submit.py to Slurm, two tasks (TP2), then submitit's own signal (USR2, to both) mid-run: both
    ranks save at the same step end, rank 0 requeues through submitit, the job resumes."""
    folder = work / "submitit"
    done = subprocess.run([sys.executable, str(ROOT / "tools/submit.py"), "--stage", "cpt", "--config",
                           *tiny(work / "submitit_run", data, "parallel.tensor_model_parallel_size=2"),
                           "--gpus-per-node", "0", "--tasks-per-node", "2", "--cpus-per-task", "1",
                           "--time", "15", "--folder", str(folder)], cwd=work, env=ENV, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    job = re.search(r"cpt job (\d+)", done.stdout).group(1)
    SUBMITTED.append(job)
    wait_for(folder / f"{job}_0_log.out", r"step=3 ")
    subprocess.run(["scancel", "--signal=USR2", job], check=True)
    info = wait_gone(job)
    import submitit

    from megatron_tibetan.launch.submission import wait

    return {"id": job, "info": info, "result": wait(submitit.SlurmJob(folder=folder, job_id=job, tasks=(0, 1))),
            "logs": [(folder / f"{job}_{task}_log.out").read_text() for task in (0, 1)]}


def submitit_local(work: Path, data: Path) -> dict:
    done = subprocess.run([sys.executable, str(ROOT / "tools/submit.py"), "--stage", "cpt", "--config",
                           *tiny(work / "local_run", data), "--local", "--time", "15", "--folder",
                           str(work / "submitit_local"), "--wait"], cwd=work, env=ENV, capture_output=True, text=True)
    return {"returncode": done.returncode, "stdout": done.stdout, "stderr": done.stderr[-3000:]}


def bad_inputs(work: Path, data: Path) -> dict:
    runs = {
        "missing_config": [str(work / "no-such-config.yaml")],
        "unknown_key": tiny(work / "bad_key", data, "train.iteratoins=5"),
        "tp_vs_world": tiny(work / "bad_tp", data, "parallel.tensor_model_parallel_size=2"),
    }
    jobs = {name: sbatch(*CPU, f"--job-name={name}", str(ROOT / "slurm/cpt.sh"), *args, cwd=work)
            for name, args in runs.items()}
    return {name: {"id": job, "info": wait_gone(job), "log": run_log(work, name, job, 0).read_text()}
            for name, job in jobs.items()}


def preprocess_array(work: Path, nanhai: Path) -> dict:
    """Three shard files (the second and third repeat lines of the first two), an array task per shard,
    a merge job after it; and the single run over the same three files."""
    with lzma.open(nanhai, "rt", encoding="utf-8") as f:
        lines = [line for _, line in zip(range(900), f)]
    parts = [lines[:300], lines[300:600] + lines[10:20], lines[600:900] + lines[310:315] + lines[20:22]]
    inputs = work / "pre" / "inputs"
    inputs.mkdir(parents=True)
    files = []
    for i, part in enumerate(parts):
        files.append(inputs / f"part_{i}.txt")
        files[-1].write_text("".join(part), encoding="utf-8")
    (work / "pre" / "inputs.list").write_text("".join(f"{p}\n" for p in files))
    flags = ["--tokenizer", "smollm2", "--append-eod"]
    array = sbatch("--array=0-2", "--cpus-per-task=1", "--time=15", str(ROOT / "slurm/preprocess.sh"),
                   str(work / "pre" / "inputs.list"), str(work / "pre" / "shards"), *flags, cwd=work)
    merge = sbatch(f"--dependency=afterok:{array}", "--kill-on-invalid-dep=yes", "--cpus-per-task=1", "--time=15", "--job-name=merge",
                   f"--output={work / 'pre' / 'merge-%j.out'}",
                   f"--wrap={sys.executable} {ROOT / 'tools/merge_datasets.py'} --input {work / 'pre' / 'shards'} "
                   f"--output-prefix {work / 'pre' / 'merged'} --no-progress", cwd=work)
    single = subprocess.run([sys.executable, str(ROOT / "tools/preprocess_data.py"), "--input", *map(str, files),
                             "--output-prefix", str(work / "pre" / "single"), "--no-progress", *flags],
                            env=ENV, capture_output=True, text=True)
    assert single.returncode == 0, single.stderr
    tasks = {task: wait_gone(f"{array}_{task}") for task in range(3)}
    logs = "".join(p.read_text() for p in sorted(work.glob(f"preprocess-{array}_*.out")))
    merge_info = wait_gone(merge)
    merge_log = work / "pre" / f"merge-{merge}.out"
    return {"array": array, "tasks": tasks, "logs": logs, "merge": merge_info,
            "merge_log": merge_log.read_text() if merge_log.is_file() else "(no merge log)"}


@pytest.fixture(scope="module")
def work(tmp_path_factory, cluster, shared_data):
    sys.path.insert(0, str(ROOT / "tests"))
    from train_data import write_dataset

    work = tmp_path_factory.mktemp("slurm")
    write_dataset(work / "data" / "nanhai_text_document", 2000)
    return work


# which scenarios each test reads: only those of the selected tests are started (e.g. with -k)
NEEDS = {
    "test_cpt_job_finishes_with_checkpoint_and_log": ["reference"],
    "test_preempted_by_usr1_then_requeued_by_the_scheduler_resumes_on_the_same_losses": ["reference", "preempted"],
    "test_two_ranks_tensor_parallel_give_the_single_process_losses": ["reference", "tp2"],
    "test_eval_job_scores_the_trained_checkpoint": ["reference", "eval"],
    "test_sft_job_fine_tunes_the_cpt_checkpoint": ["reference", "sft"],
    "test_submitit_job_preempted_by_its_signal_resumes": ["tp2", "submitit"],
    "test_submitit_local_executor": ["reference", "local"],
    "test_bad_input_fails_fast_with_a_clear_message": ["bad"],
    "test_preprocessing_array_and_merge_equal_one_run": ["preprocess"],
}


@pytest.fixture(scope="module")
def jobs(request, work, shared_data):
    data = work / "data" / "nanhai_text_document"
    selected = {item.originalname for item in request.session.items if item.module is request.module}
    needed = {name for test in selected for name in NEEDS.get(test, ())}
    reference_id = Future()  # the evaluation job waits for the reference job (a Slurm dependency)
    scenarios = {  # the slowest (requeues) first
        "preempted": (preempted, work, data),
        "submitit": (submitit_preempted, work, data),
        "reference": (reference, work, data, reference_id),
        "eval": (evaluation, work, reference_id, shared_data / "eval" / "flores200.dev.bo"),
        "sft": (fine_tuning, work, reference_id, shared_data / "parallel"),
        "tp2": (tensor_parallel, work, data),
        "bad": (bad_inputs, work, data),
        "preprocess": (preprocess_array, work, shared_data / "mono" / "nanhai.bo.txt.xz"),
        "local": (submitit_local, work, data),
    }
    pool = ThreadPoolExecutor(max_workers=len(scenarios))
    futures = {name: pool.submit(*args) for name, args in scenarios.items() if name in needed}
    yield futures
    ABORT.set()
    if SUBMITTED:
        subprocess.run(["scancel", *SUBMITTED], capture_output=True)
    pool.shutdown(wait=False, cancel_futures=True)


def result(jobs, name: str):
    return jobs[name].result(timeout=TIMEOUT)


# --- tests ---------------------------------------------------------------------------------------------------

def test_cpt_job_finishes_with_checkpoint_and_log(jobs, work):
    ref = result(jobs, "reference")
    assert ref["info"]["JobState"] == "COMPLETED" and ref["info"]["ExitCode"] == "0:0", ref["info"]
    assert (work / "reference" / "ckpt" / "latest_checkpointed_iteration.txt").read_text().strip() == str(N)
    assert (work / "reference" / "ckpt" / f"iter_{N:07d}").is_dir()
    log = run_log(work, "cpt", ref["id"], 0).read_text()
    assert f"step={N} " in log and "[cpt.sh] finished" in log
    assert f"log logs/cpt-{ref['id']}-restart0.log" in (work / f"cpt-{ref['id']}.out").read_text()
    steps = losses(work / "reference")
    assert [s for s, _ in steps] == list(range(1, N + 1)) and steps[-1][1] < steps[0][1] - 1.0


def test_preempted_by_usr1_then_requeued_by_the_scheduler_resumes_on_the_same_losses(jobs, work):
    ref, job = result(jobs, "reference"), result(jobs, "preempted")
    assert job["info"]["JobState"] == "COMPLETED" and job["info"]["Restarts"] == "2", job["info"]
    first, second, third = (run_log(work, "preempt", job["id"], r).read_text() for r in range(3))
    # USR1: every rank finished its step and saved; the script requeued the job
    k = int(re.search(r"SIGUSR1 received: saving at iteration (\d+)", first).group(1))
    assert 3 <= k < N and "[cpt.sh] requeued" in first
    # scontrol requeue: SIGTERM, saved; the scheduler (not the script) requeued it
    assert f"restart 1 on" in second and f"start at iteration {k} from" in second
    m = int(re.search(r"SIGTERM received: saving at iteration (\d+)", second).group(1))
    assert k < m < N and "not requeued by this script" in second and "[cpt.sh] requeued" not in second
    assert "restart 2 on" in third and f"start at iteration {m} from" in third and "[cpt.sh] finished" in third
    assert not list((work / "preempted" / "ckpt").glob(".*partial"))  # each stop-time save completed
    # every step once, each loss equal to the uninterrupted run's (bitwise)
    assert losses(work / "preempted") == losses(work / "reference")


def test_two_ranks_tensor_parallel_give_the_single_process_losses(jobs, work):
    job = result(jobs, "tp2")
    assert job["info"]["JobState"] == "COMPLETED", job["info"]
    log = run_log(work, "tp2", job["id"], 0).read_text()
    assert "TP 2 PP 1 DP 1" in log and "tasks 2" in log
    tp2, ref = losses(work / "tp2"), losses(work / "reference")
    assert [s for s, _ in tp2] == [s for s, _ in ref]
    assert [x for _, x in tp2] == pytest.approx([x for _, x in ref], rel=2e-5, abs=0)


def test_eval_job_scores_the_trained_checkpoint(jobs, work):
    job = result(jobs, "eval")
    assert job["info"]["JobState"] == "COMPLETED", (job["info"], list((work / "logs").glob("eval-*")))
    log = run_log(work, "eval", job["id"], 0).read_text()
    assert "--device cpu" in log and "[eval.sh] finished" in log
    metrics = json.loads((work / "eval" / "metrics.json").read_text())
    scores = metrics["models"]["tiny"]["flores200.dev.bo"]
    # 20 steps from scratch: far better than uniform over SmolLM2's 49,152 ids, far from good
    assert 50 < scores["perplexity"] < 49152 and math.isfinite(scores["bits_per_byte"])


def test_sft_job_fine_tunes_the_cpt_checkpoint(jobs, work):
    job = result(jobs, "sft")
    assert job["info"]["JobState"] == "COMPLETED", job["info"]
    log = run_log(work, "sft", job["id"], 0).read_text()
    assert f"start at iteration 0 from {work / 'reference' / 'ckpt'}/iter_{N:07d}" in log and "[sft.sh] finished" in log
    assert (work / "sft" / "ckpt" / "latest_checkpointed_iteration.txt").read_text().strip() == "3"
    sft, cpt = losses(work / "sft"), losses(work / "reference")
    assert [s for s, _ in sft] == [1, 2, 3]
    # from the trained weights: 3 steps from a random model stay near its ln(49152) = 10.8 (the CPT run's
    # third step is at 10.2 with twice the learning rate)
    assert sft[-1][1] < cpt[0][1] - 2.0


def test_submitit_job_preempted_by_its_signal_resumes(jobs, work):
    job = result(jobs, "submitit")
    tp2 = losses(work / "tp2")
    assert job["info"]["JobState"] == "COMPLETED" and job["info"]["Restarts"] == "1", job["info"]
    stops = [re.findall(r"stopped by SIGUSR2 at iteration (\d+)", log) for log in job["logs"]]
    assert len(stops[0]) == 1 and stops[0] == stops[1], stops  # both ranks, after the same step
    assert "Calling checkpoint method" in job["logs"][0] and "Requeued job" in job["logs"][0]
    assert "restart 1" in job["logs"][0] and "restart 1" in job["logs"][1]
    assert job["result"] == {"iteration": N, "loss": tp2[-1][1], "restarts": 1}
    assert losses(work / "submitit_run") == tp2  # the sbatch TP2 job's, bitwise


def test_submitit_local_executor(jobs, work):
    out = result(jobs, "local")
    assert out["returncode"] == 0, out["stderr"]
    ref = losses(work / "reference")
    assert f"'loss': {ref[-1][1]!r}" in out["stdout"]
    assert losses(work / "local_run") == ref


def test_bad_input_fails_fast_with_a_clear_message(jobs):
    bad = result(jobs, "bad")
    expected = {
        "missing_config": r"error: config \S*no-such-config.yaml not found",
        "unknown_key": r"unknown key 'train.iteratoins'",
        "tp_vs_world": r"world size 1 is not divisible by parallel.tensor_model_parallel_size \(2\)",
    }
    for name, pattern in expected.items():
        job = bad[name]
        assert job["info"]["JobState"] == "FAILED" and job["info"]["ExitCode"] == "2:0", (name, job["info"])
        assert re.search(pattern, job["log"]), (name, job["log"])
        assert "model llama" not in job["log"] and "srun" not in job["log"], name  # no rank was started


def test_preprocessing_array_and_merge_equal_one_run(jobs, work):
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    out = result(jobs, "preprocess")
    assert all(t["JobState"] == "COMPLETED" for t in out["tasks"].values()), out["logs"]
    assert out["merge"]["JobState"] == "COMPLETED", out["merge_log"]
    merged, single = (IndexedDataset(str(work / "pre" / f"{name}_text_document")) for name in ("merged", "single"))
    stats = {name: json.loads((work / "pre" / f"{name}_stats.json").read_text()) for name in ("merged", "single")}
    assert len(merged) == len(single) == stats["single"]["documents_out"] > 0
    assert all((merged[i] == single[i]).all() for i in range(len(single)))
    for key in ("documents_in", "documents_out", "dropped", "tokens", "bytes_in", "bytes_out", "syllables",
                "tokens_per_syllable", "tokenizer", "vocab_size", "dtype", "eod_id"):
        assert stats["merged"][key] == stats["single"][key], key
    assert stats["merged"]["cross_shard_duplicates"] > 0  # the repeated lines were removed across shards
    assert "3 shards" in out["merge_log"]
    # shards that are not one dataset are refused, naming the shard and the setting
    from megatron_tibetan.data.merge import MergeError, merge_datasets

    odd = work / "pre" / "odd_shards"
    shutil.copytree(work / "pre" / "shards", odd)
    stats_path = odd / "shard_00001_stats.json"
    shard = json.loads(stats_path.read_text())
    stats_path.write_text(json.dumps({**shard, "eod_id": shard["eod_id"] + 1}))
    with pytest.raises(MergeError, match=r"shard_00001_stats.json: eod_id is"):
        merge_datasets([str(odd)], str(work / "pre" / "odd"), progress=False)
    stats_path.write_text(json.dumps(shard))
    (odd / "shard_00002_text_document.bin").unlink()  # found only after two shards were copied
    with pytest.raises(MergeError, match=r"shard \S*shard_00002: missing \S*shard_00002_text_document.bin"):
        merge_datasets([str(odd)], str(work / "pre" / "odd"), progress=False)
    assert not list((work / "pre").glob("odd_text_document*"))  # no partial dataset left behind


# --- launch detection and signals (no jobs) ---------------------------------------------------------------------

def test_plain_python_inside_an_allocation_is_one_process(cluster):
    """salloc's shell has SLURM_NTASKS=2 but no job step: a plain python is alone and must not wait for peers."""
    code = ("import os; from megatron_tibetan.distributed import init_parallel, world; import torch; "
            "init_parallel(device='cpu'); print('NTASKS', os.environ['SLURM_NTASKS'], 'world', world(), "
            "torch.distributed.get_world_size())")
    done = subprocess.run(["salloc", "--ntasks=2", "--cpus-per-task=1", "--time=5", sys.executable, "-c", code],
                          env={**ENV, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "NTASKS 2 world (0, 1, 0) 1" in done.stdout


def test_rendezvous_from_the_slurm_step(cluster, monkeypatch):
    from megatron_tibetan.distributed import launcher, slurm_rendezvous, world

    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SLURM_NTASKS", "8")
    monkeypatch.setenv("SLURM_PROCID", "0")
    assert launcher() == "none" and world() == (0, 1, 0)  # a batch script: not a step
    monkeypatch.setenv("SLURM_STEP_NUM_TASKS", "8")
    monkeypatch.setenv("SLURM_PROCID", "5")
    monkeypatch.setenv("SLURM_LOCALID", "1")
    monkeypatch.setenv("SLURM_STEP_NODELIST", "gpu[07-09,11],cpu1")
    monkeypatch.setenv("SLURM_JOB_ID", "123456")
    assert launcher() == "slurm" and world() == (5, 8, 1)
    assert slurm_rendezvous() == ("gpu07", 20000 + 123456 % 20000)  # expanded by scontrol show hostnames
    monkeypatch.setenv("MASTER_ADDR", "10.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "29500")
    assert slurm_rendezvous() == ("10.0.0.1", 29500)
    monkeypatch.setenv("WORLD_SIZE", "2")  # torchrun inside the step wins
    monkeypatch.setenv("RANK", "1")
    assert launcher() == "torchrun" and world() == (1, 2, 0)


def test_exit_signals_nest_and_survive_start_up():
    """The entry point's ExitSignal keeps a signal from before the loop's (which inherits it), and learns which
    signal stopped the loop; restore() puts back what was there."""
    import signal

    from megatron_tibetan.training.signals import ExitSignal

    before = signal.getsignal(signal.SIGUSR1)
    outer = ExitSignal(["SIGTERM", "SIGUSR1"])
    os.kill(os.getpid(), signal.SIGUSR1)  # during start-up: recorded, not fatal
    assert outer.received == "SIGUSR1"
    loop = ExitSignal(["SIGTERM", "SIGUSR1"])
    assert loop.received == "SIGUSR1"  # taken over from the entry point's
    loop.restore()
    outer.restore()
    outer = ExitSignal(["SIGTERM", "SIGUSR1", "SIGUSR2"])
    loop = ExitSignal(["SIGTERM", "SIGUSR1", "SIGUSR2"])
    assert loop.received is None
    os.kill(os.getpid(), signal.SIGUSR2)
    assert loop.received == "SIGUSR2" and outer.received == "SIGUSR2"  # passed back out
    os.kill(os.getpid(), signal.SIGTERM)
    assert loop.received == "SIGUSR2" and outer.received == "SIGUSR2"  # the first one counts
    loop.restore()
    outer.restore()
    assert signal.getsignal(signal.SIGUSR1) == before
    with pytest.raises(ValueError, match="SIGKILL"):
        ExitSignal(["SIGKILL"])
