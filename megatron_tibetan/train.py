"""Train (continual pretraining; SFT uses the same loop): ``python -m megatron_tibetan.train --config FILE [key.sub=value ...]``.

Launch one process per device with ``srun`` (slurm/cpt.sh), ``torchrun --nproc_per_node N -m
megatron_tibetan.train ...`` or submitit (tools/submit.py). A run whose ``checkpoint.dir`` already holds a
checkpoint resumes from it. An exit signal (``train.exit_signals``: SIGTERM, SIGUSR1) makes every rank
finish its step and save; the process then exits with status 3, "stopped, resume me", which is what a job
script requeues on. Ctrl-C (SIGINT) does the same; a second Ctrl-C stops at once without saving (status 130).
Exit statuses: 0 finished, 2 bad config or input (one line on stderr; a damaged checkpoint with
``checkpoint.strict_load``, a checkpoint directory another run holds), 3 stopped to be resumed, 4 a save
failed (disk full, quota: nothing partial is left, the previous checkpoint is intact). ``--check-world N`` only loads the config and checks it against N ranks (a job script's
fail-fast check before it starts its ranks).
"""

from __future__ import annotations

import argparse
import sys

from megatron_tibetan.config import ConfigError, load_config

EXIT_FINISHED, EXIT_BAD_INPUT, EXIT_RESUME, EXIT_SAVE_FAILED, EXIT_INTERRUPTED = 0, 2, 3, 4, 130


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m megatron_tibetan.train", description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True, help="YAML config, e.g. configs/cpt/tiny-cpu.yaml")
    parser.add_argument("--check-world", type=int, metavar="N",
                        help="only check the config (and TP x PP x batch against N ranks), then exit")
    parser.add_argument("overrides", nargs="*", help="key.sub=value overrides, e.g. train.iterations=10")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if args.check_world is not None:
        return check_world(cfg, args.check_world)

    from megatron_tibetan.training.signals import ExitSignal

    # armed before the slow imports and the model build: a signal then is kept (not fatal) and stops the
    # run after its first step; the loop installs its own handler and hands every signal back out to this one
    exit_signal = ExitSignal(cfg.train.exit_signals)
    try:
        from megatron_tibetan.checkpoint_dir import CheckpointDamaged, CheckpointLocked, CheckpointSaveError
        from megatron_tibetan.text.readers import InputError
        from megatron_tibetan.training.loop import NonFiniteLossError, run

        try:
            result = run(cfg)
        except (ConfigError, FileNotFoundError, InputError, NonFiniteLossError, CheckpointDamaged, CheckpointLocked) as e:
            print(f"error: {e}", file=sys.stderr)
            return EXIT_BAD_INPUT
        except CheckpointSaveError as e:
            print(f"error: {e}", file=sys.stderr)
            return EXIT_SAVE_FAILED
        except KeyboardInterrupt as e:
            print(f"interrupted: {e or 'Ctrl-C'}; the last saved checkpoint is the one a rerun resumes from", file=sys.stderr)
            return EXIT_INTERRUPTED
    finally:
        exit_signal.restore()
    if not result["stopped_by_signal"]:
        return EXIT_FINISHED
    if not cfg.checkpoint.dir:
        print("error: stopped by a signal, but checkpoint.dir is not set: nothing was saved to resume from", file=sys.stderr)
        return 1
    return EXIT_RESUME


def check_world(cfg, world_size: int) -> int:
    from megatron_tibetan.training.checks import check_world as check

    try:
        dp = check(cfg, world_size)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    p = cfg.parallel
    print(f"config OK for {world_size} ranks: TP {p.tensor_model_parallel_size} x PP {p.pipeline_model_parallel_size} "
          f"x DP {dp}")
    return EXIT_FINISHED


if __name__ == "__main__":  # the guard matters: dist_checkpointing's save spawns a process that re-imports this
    sys.exit(main())
