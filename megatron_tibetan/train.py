"""Train (continual pretraining; SFT uses the same loop): ``python -m megatron_tibetan.train --config FILE [key.sub=value ...]``.

Launch one process per device with ``torchrun --nproc_per_node N -m megatron_tibetan.train ...`` (or
through Slurm). A run whose ``checkpoint.dir`` already holds a checkpoint resumes from it; the exit signal
(``train.exit_signal``, SIGTERM by default) saves and exits with status 0 so the job can be requeued.
"""

from __future__ import annotations

import argparse
import sys

from megatron_tibetan.config import ConfigError, load_config


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m megatron_tibetan.train", description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True, help="YAML config, e.g. configs/cpt/tiny-cpu.yaml")
    parser.add_argument("overrides", nargs="*", help="key.sub=value overrides, e.g. train.iterations=10")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as e:
        parser.error(str(e))
    from megatron_tibetan.training.loop import NonFiniteLossError, run

    try:
        run(cfg)
    except (ConfigError, FileNotFoundError, NonFiniteLossError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":  # the guard matters: dist_checkpointing's save spawns a process that re-imports this
    sys.exit(main())
