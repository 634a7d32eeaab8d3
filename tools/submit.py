"""Submit a stage to Slurm (or run it on this machine) through submitit; requeued on pre-emption.

    python tools/submit.py --stage cpt --config configs/cpt/qwen2.5-7b.yaml train.iterations=1000 \\
        --nodes 2 --gpus-per-node 8 --partition gpu --time 24:00:00
    python tools/submit.py --stage sft --config configs/sft/FILE.yaml --nodes 1
    python tools/submit.py --stage eval --gpus-per-node 1 -- --model cpt=runs/cpt/ckpt --ppl FILE --output out/eval
    python tools/submit.py --stage cpt --config configs/cpt/tiny-cpu.yaml --local --gpus-per-node 0 --wait

Prints the job id and its log; --wait blocks until the job (and any requeued run) ends and prints its result.
"""

import argparse
import sys


from megatron_tibetan.config import ConfigError
from megatron_tibetan.launch.submission import STAGES, Resources, submit, wait


def minutes(text: str) -> int:
    """Minutes (rounded up) from Slurm's time forms: M, M:S, H:M:S, D-H, D-H:M, D-H:M:S."""
    days, dash, clock = text.rpartition("-")
    try:
        parts = [int(x) for x in clock.split(":")]
        days = int(days) if dash else 0
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a Slurm time (minutes, H:M:S or D-H:M:S)") from None
    if dash:  # D-H, D-H:M, D-H:M:S
        h, m, s = (parts + [0, 0])[:3]
    else:  # M, M:S, H:M:S
        h, m, s = [0] * (3 - len(parts)) + parts if len(parts) == 3 else [0] + (parts + [0])[:2]
    return days * 24 * 60 + h * 60 + m + (1 if s else 0)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stage", required=True, choices=STAGES)
    p.add_argument("--config", help="YAML config (cpt, sft)")
    p.add_argument("args", nargs="*", help="key.sub=value overrides (cpt, sft); for eval, tools/evaluate.py's arguments after --")
    d = Resources()
    p.add_argument("--nodes", type=int, default=d.nodes)
    p.add_argument("--gpus-per-node", type=int, help=f"default {d.gpus_per_node} on Slurm, 0 with --local; 0 means CPU nodes")
    p.add_argument("--tasks-per-node", type=int, help="default: one per GPU (1 on CPU nodes, and for eval)")
    p.add_argument("--cpus-per-task", type=int, default=d.cpus_per_task)
    p.add_argument("--partition")
    p.add_argument("--time", type=minutes, default=d.time_min, help="minutes, HH:MM:SS or D-HH:MM:SS (default 24:00:00)")
    p.add_argument("--signal-delay", type=int, default=d.signal_delay_s, help="seconds before the time limit to save and requeue")
    p.add_argument("--local", action="store_true", help="run on this machine with submitit's local executor")
    p.add_argument("--folder", default=d.folder, help="submitit's job folder (pickles, logs)")
    p.add_argument("--name", help="Slurm job name (default: the stage)")
    p.add_argument("--wait", action="store_true", help="wait for the result")
    argv = sys.argv[1:] if argv is None else list(argv)
    after = argv.index("--") if "--" in argv else len(argv)  # everything after -- is passed on untouched
    a = p.parse_intermixed_args(argv[:after])
    a.args += argv[after + 1:]
    gpus = a.gpus_per_node if a.gpus_per_node is not None else (0 if a.local else d.gpus_per_node)
    resources = Resources(nodes=a.nodes, gpus_per_node=gpus, tasks_per_node=a.tasks_per_node, cpus_per_task=a.cpus_per_task,
                          partition=a.partition, time_min=a.time, signal_delay_s=a.signal_delay, local=a.local,
                          folder=a.folder, name=a.name)
    try:
        job = submit(a.stage, a.config, a.args, resources)
    except (ConfigError, ValueError, FileNotFoundError) as e:
        print(f"submit: error: {e}", file=sys.stderr)
        return 2
    print(f"[submit] {a.stage} job {job.job_id}; log {job.paths.stdout}", flush=True)
    if a.wait:
        try:
            print(f"[submit] result: {wait(job)}")
        except Exception as e:  # the job's own error, with its traceback, is in its log
            print(f"submit: error: job {job.job_id} failed: {str(e).strip().splitlines()[-1]} (log {job.paths.stdout})",
                  file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
