"""Submit a stage (cpt, sft, eval) through submitit: the entry points of slurm/*.sh, from Python.

    job = submit("cpt", "configs/cpt/qwen2.5-7b.yaml", ["train.iterations=1000"], Resources(nodes=2))
    job.result()  # the final step's record

Training runs in the submitit task itself, one task per GPU (:class:`TrainingJob`). Pre-emption goes
through submitit's own mechanism, reconciled with the loop's save-at-step-end:

- submitit asks Slurm for ``--signal=USR2@90``, which reaches every task (the step-level form). Its
  default handler would, on rank 0 only, requeue and exit in the middle of a step, leaving the other
  ranks waiting in a collective. Here the job adds USR2 to ``train.exit_signals``, so on every rank the
  loop's handler only sets the flag; at the end of the step the ranks agree (all-reduce), save together
  and return.
- Then rank 0 hands over to submitit's handler, which calls :meth:`TrainingJob.checkpoint`
  (``Checkpointable``: the same job, which resumes from ``checkpoint.dir``), requeues the job with
  ``scontrol requeue`` (with the local executor: restarts the tasks) and exits. The other ranks exit with
  status 3 without writing a result, so the caller keeps waiting for the requeued run.
- After a SIGTERM (scancel, ``scontrol requeue``, a scheduler pre-emption) the ranks save too, but the
  scheduler decides what follows: nobody requeues the job from inside (a cancel stays a cancel).

Evaluation (:class:`EvaluationJob`) runs ``tools/evaluate.py`` with the given arguments in one task; it
is not resumable, so a pre-empted evaluation starts again from the beginning when the scheduler requeues it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import submitit

from megatron_tibetan.config import load_config

STAGES = ("cpt", "sft", "eval")
EXIT_RESUME = 3  # as python -m megatron_tibetan.train
ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Resources:
    nodes: int = 1
    gpus_per_node: int = 8  # 0: CPU nodes (gloo)
    tasks_per_node: int | None = None  # default: one per GPU, or 1 on CPU nodes
    cpus_per_task: int = 8
    partition: str | None = None
    time_min: int = 24 * 60
    signal_delay_s: int = 90  # submitit's USR2 comes this long before the time limit
    local: bool = False  # submitit's LocalExecutor on this machine instead of Slurm
    folder: str = "runs/submitit"  # submitit's pickles and per-task logs (%j is the job id)
    name: str | None = None  # Slurm job name; default: the stage

    @property
    def tasks(self) -> int:
        return self.tasks_per_node or max(self.gpus_per_node, 1)


def preemption_signal() -> str:
    """The signal submitit sends before the time limit and on ``job._interrupt()`` (``SIGUSR2`` unless
    SUBMITIT_PREEMPT_SIGNAL says otherwise)."""
    return submitit.JobEnvironment._usr_sig().name


class TrainingJob(submitit.helpers.Checkpointable):
    """CPT or SFT (the same loop) in each submitit task; resumes from ``checkpoint.dir`` when requeued."""

    def __init__(self, config: str, overrides: list[str]):
        self.config = config
        self.overrides = list(overrides)

    def __call__(self) -> dict:
        from megatron_tibetan.training.loop import run
        from megatron_tibetan.training.signals import ExitSignal

        env = submitit.JobEnvironment()
        # RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR (first host), MASTER_PORT (from the job id) for env://
        submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)
        cfg = load_config(self.config, self.overrides)
        usr = preemption_signal()
        if usr not in cfg.train.exit_signals:
            cfg.train.exit_signals.append(usr)
        restarts = os.environ.get("SLURM_RESTART_COUNT", "0")
        print(f"[submit] {env}; restart {restarts}; exit signals {', '.join(cfg.train.exit_signals)}", flush=True)
        # armed before the model is built (a signal then is kept); afterwards it knows which signal stopped the run
        exit_signal = ExitSignal(cfg.train.exit_signals)
        try:
            result = run(cfg)
        finally:
            exit_signal.restore()  # submitit's own handlers are back
        if not result["stopped_by_signal"]:
            last = result["records"][-1] if result["records"] else {}
            return {"iteration": result["iteration"], "loss": last.get("loss"), "restarts": int(restarts)}
        stopped_by = exit_signal.received
        print(f"[submit] stopped by {stopped_by} at iteration {result['iteration']}, checkpoint saved", flush=True)
        if stopped_by != "SIGTERM" and env.global_rank == 0:
            # submitit's handler: checkpoint() -> requeue -> exit (it does nothing on the other ranks)
            handler = signal.getsignal(signal.Signals[usr])
            if callable(handler):
                handler(signal.Signals[usr], None)
        sys.exit(EXIT_RESUME)  # no result: the caller waits for the requeued run


class EvaluationJob:
    """``tools/evaluate.py ARGS`` in one task (its own process, as ``slurm/eval.sh`` runs it)."""

    def __init__(self, args: list[str]):
        self.args = list(args)

    def __call__(self) -> str:
        device = "cuda" if os.environ.get("CUDA_VISIBLE_DEVICES") else "cpu"
        args = self.args if "--device" in self.args else [*self.args, "--device", device]
        command = [sys.executable, str(ROOT / "tools" / "evaluate.py"), *args]
        print(f"[submit] {' '.join(command)}", flush=True)
        done = subprocess.run(command, cwd=os.getcwd())
        if done.returncode:
            raise RuntimeError(f"tools/evaluate.py exited with status {done.returncode} (its messages are above)")
        return f"tools/evaluate.py {' '.join(args)}: done"


def check_stage(stage: str, config: str | None, args: list[str], resources: Resources) -> None:
    """Fail on the submitting machine, before anything is queued: unknown stage, bad config or override,
    a layout that does not divide the ranks asked for (raises ConfigError/ValueError naming it)."""
    from megatron_tibetan.config import ConfigError

    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}: one of {', '.join(STAGES)}")
    if resources.local and resources.nodes != 1:
        raise ValueError("--local runs on this machine: --nodes must be 1")
    if stage == "eval":
        if config is not None:
            raise ValueError("--stage eval takes tools/evaluate.py's arguments (after --), not --config")
        if not args:
            raise ValueError("--stage eval needs tools/evaluate.py's arguments after --, e.g. -- --model DIR --ppl FILE --output OUT")
        return
    if config is None:
        raise ValueError(f"--stage {stage} needs --config")
    from megatron_tibetan.training.checks import check_world

    cfg = load_config(config, args)
    if not cfg.checkpoint.dir:
        raise ConfigError("checkpoint.dir is not set: a pre-empted job could not save nor resume; set it")
    try:
        check_world(cfg, resources.nodes * resources.tasks)
    except ConfigError as e:
        raise ConfigError(f"{e} ({resources.nodes} node(s) x {resources.tasks} task(s) asked for)") from None


def make_executor(stage: str, resources: Resources) -> submitit.Executor:
    r = resources
    name = r.name or stage
    tasks = 1 if stage == "eval" else r.tasks
    if r.local:
        executor = submitit.LocalExecutor(folder=r.folder)
        executor.update_parameters(timeout_min=r.time_min, tasks_per_node=tasks, gpus_per_node=r.gpus_per_node,
                                   signal_delay_s=r.signal_delay_s)
        return executor
    executor = submitit.SlurmExecutor(folder=r.folder)
    executor.update_parameters(
        job_name=name, nodes=r.nodes, ntasks_per_node=tasks, cpus_per_task=r.cpus_per_task,
        gpus_per_node=r.gpus_per_node or None, partition=r.partition, time=r.time_min,
        signal_delay_s=r.signal_delay_s, stderr_to_stdout=True,
        additional_parameters={"requeue": True},  # scontrol requeue needs it where the cluster's JobRequeue is 0
    )
    return executor


def wait(job: submitit.Job, poll_s: float = 2.0):
    """Task 0's result once the job (and any requeued run) has left the queue; raises its error otherwise.
    Watches ``squeue`` rather than submitit's ``sacct`` calls, which fail on clusters without accounting."""
    if isinstance(job, submitit.LocalJob):
        job.wait()
    else:
        while True:  # squeue lists the job while it runs, is pending or requeued; an error (busy) is not an answer
            queued = subprocess.run(["squeue", "-h", "-j", str(job.job_id)], capture_output=True, text=True)
            if (queued.returncode == 0 and not queued.stdout.strip()) or "Invalid job id" in queued.stderr:
                break  # ended (and, after MinJobAge, forgotten)
            time.sleep(poll_s)
    return job.results()[0]  # task 0's (every task must have finished)


def submit(stage: str, config: str | None, args: list[str], resources: Resources) -> submitit.Job:
    """Check, then queue ``stage``: ``config`` + ``key=value`` ``args`` for cpt/sft, tools/evaluate.py's
    ``args`` for eval. Returns submitit's Job (``job.job_id``, ``job.result()``, ``job.paths.stdout``)."""
    check_stage(stage, config, args, resources)
    executor = make_executor(stage, resources)
    job_fn = EvaluationJob(args) if stage == "eval" else TrainingJob(config, args)
    return executor.submit(job_fn)
