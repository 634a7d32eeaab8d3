"""Multi-rank training checks, driven by tests/test_train_loop.py: ``torchrun --nproc_per_node 4 tests/train_parallel.py WORKDIR``.

All runs start from one initial checkpoint (iteration 0, saved at TP1 PP1) and see the same data, so their
loss curves must agree: TP1 PP1 (DP4), TP2 (DP2), PP2 (DP2), TP2 x PP2 (DP1). Then a TP2 x PP2 run stopped
at step 2 is resumed as TP1 PP1 (DP4) and as TP2 (DP2): a change of data-parallel size and resharding.
Rank 0 writes WORKDIR/parallel.json.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from train_data import write_dataset  # noqa: E402

from megatron_tibetan.config import load_config  # noqa: E402

LAYOUTS = {"tp1pp1": (1, 1), "tp2": (2, 1), "pp2": (1, 2), "tp2pp2": (2, 2)}
ITERATIONS = 4


def config(work: Path, name: str, tp: int, pp: int, *extra: str):
    return load_config(ROOT / "configs/cpt/tiny-cpu.yaml", [
        f"data.paths=[{work / 'data' / 'nanhai_text_document'}]", f"data.cache_dir={work / 'cache'}",
        "data.seq_length=32", "batch.micro_batch_size=1", "batch.global_batch_size=4",
        "schedule.warmup_iterations=1", f"train.iterations={ITERATIONS}",
        f"parallel.tensor_model_parallel_size={tp}", f"parallel.pipeline_model_parallel_size={pp}",
        f"checkpoint.dir={work / name / 'ckpt'}", f"logging.dir={work / name}", "logging.progress=false",
        "logging.tensorboard=false", "validation.interval=null", "checkpoint.save_interval=null", *extra,
    ])


def losses(result) -> list:
    return [r["loss"] for r in result["records"]]


def main(work: Path) -> None:
    import torch

    from megatron_tibetan.distributed import init_parallel
    from megatron_tibetan.training.loop import run

    init_parallel(1, 1)  # the process group, once for all runs
    rank = torch.distributed.get_rank()
    if rank == 0 and not (work / "data" / "nanhai_text_document.idx").is_file():
        write_dataset(work / "data" / "nanhai_text_document", 500)
    torch.distributed.barrier()

    run(config(work, "init", 1, 1, "train.iterations=0", "schedule.warmup_iterations=0"))
    start = [f"checkpoint.load={work / 'init' / 'ckpt'}", "checkpoint.finetune=true"]
    out = {name: losses(run(config(work, name, tp, pp, *start))) for name, (tp, pp) in LAYOUTS.items()}

    # stopped at 2 as TP2 x PP2 (DP1), resumed with another layout and data-parallel size
    run(config(work, "stop2", 2, 2, *start, "train.iterations=2", f"schedule.decay_iterations={ITERATIONS}"))
    for name, (tp, pp) in {"resume_tp1pp1": (1, 1), "resume_tp2": (2, 1)}.items():
        resumed = config(work, name, tp, pp, f"checkpoint.load={work / 'stop2' / 'ckpt'}")
        out[name] = [r["loss"] for r in run(resumed)["records"]]
    if rank == 0:
        (work / "parallel.json").write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
