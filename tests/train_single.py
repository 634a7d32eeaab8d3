"""One-process training checks on real Tibetan, driven by tests/test_train_loop.py (results as JSON).

    python tests/train_single.py WORKDIR killsave   # trains with saves at 2 and 4, SIGKILLs itself inside the save at 4
    python tests/train_single.py WORKDIR main       # uninterrupted run; SIGTERM at 3 then resume; resume after the kill

The tiny config (configs/cpt/tiny-cpu.yaml) is used as is, shrunk by overrides to seconds.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from train_data import write_dataset  # noqa: E402

from megatron_tibetan.config import load_config  # noqa: E402

ITERATIONS = 8


def config(work: Path, name: str, *extra: str):
    prefix = work / "data" / "nanhai_text_document"
    if not Path(f"{prefix}.idx").is_file():
        write_dataset(prefix, 2000)
    return load_config(ROOT / "configs/cpt/tiny-cpu.yaml", [
        f"data.paths=[{prefix}]", f"data.cache_dir={work / 'cache'}", "data.seq_length=64",
        "batch.micro_batch_size=2", "batch.global_batch_size=4", "schedule.warmup_iterations=2",
        f"train.iterations={ITERATIONS}", "checkpoint.save_interval=4", "checkpoint.keep_last=2",
        f"checkpoint.dir={work / name / 'ckpt'}", f"logging.dir={work / name}", "logging.interval=1",
        "logging.progress=false", "validation.interval=null", "validation.iterations=4", *extra,
    ])


def records(result) -> list:
    return [{k: r[k] for k in ("step", "loss", "lr", "grad_norm", "consumed_samples")} for r in result["records"]]


def killsave(work: Path) -> None:
    """Train with saves at 2 and 4; die by SIGKILL after the save at 4 wrote its files, before it completed."""
    from megatron.core import dist_checkpointing

    from megatron_tibetan.training.loop import run

    real_save = dist_checkpointing.save

    def save_then_die(state, path, *args, **kwargs):
        real_save(state, path, *args, **kwargs)
        if "iter_0000004" in str(path):
            os.kill(os.getpid(), signal.SIGKILL)

    dist_checkpointing.save = save_then_die
    run(config(work, "kill", "checkpoint.save_interval=2"))


def main(work: Path) -> dict:
    from megatron_tibetan.checkpoint_dir import latest_iteration_dir, model_sharded_state, save_iteration
    from megatron_tibetan.training import loop, metrics

    out = {}
    # 1. uninterrupted, with validation before and after
    full_cfg = config(work, "full", "validation.at_start=true", f"validation.interval={ITERATIONS}")
    trainer = loop.Trainer(full_cfg)
    out["full"] = records(trainer.train())
    # a converted-style (model only) checkpoint to start another run from, in that run's own directory
    save_iteration(work / "protect" / "ckpt", 0, model_sharded_state(trainer.model), spec=trainer.spec)
    trainer.close()
    out["config_saved"] = {"run": load_config(work / "full" / "config.yaml") == full_cfg,
                           "checkpoint": load_config(work / "full" / "ckpt" / "iter_0000008" / "config.yaml") == full_cfg}
    out["full_valid"] = [json.loads(l) for l in open(work / "full" / "metrics.jsonl") if '"valid"' in l]

    # 2. SIGTERM after step 3: saves iteration 3 and stops; a second launch resumes to the end
    class SignalledTrainer(loop.Trainer):
        def train_step(self, iterators):
            result = super().train_step(iterators)
            if self.iteration + 1 == 3:  # iteration is incremented after train_step returns
                os.kill(os.getpid(), signal.SIGTERM)
            return result

    trainer = SignalledTrainer(config(work, "sigterm"))
    first = trainer.train()
    trainer.close()
    out["sigterm_first"] = {"stopped_by_signal": first["stopped_by_signal"], "iteration": first["iteration"],
                            "latest": latest_iteration_dir(work / "sigterm" / "ckpt").name}
    out["sigterm_resumed"] = records(loop.run(config(work, "sigterm")))

    # 3. after the SIGKILL inside the save at 4: what is on disk, then resume from it
    kill_dir = work / "kill" / "ckpt"
    out["kill_on_disk"] = {"latest": latest_iteration_dir(kill_dir).name,
                           "entries": sorted(p.name for p in kill_dir.iterdir())}
    out["kill_resumed"] = records(loop.run(config(work, "kill", "checkpoint.save_interval=2")))
    out["kill_after"] = sorted(p.name for p in kill_dir.iterdir())

    # 4. bf16 from a weights-only load: the optimizer's fp32 master weights must be the loaded ones
    out["bf16_finetune"] = records(loop.run(config(
        work, "bf16", f"checkpoint.load={work / 'full' / 'ckpt'}", "checkpoint.finetune=true", "checkpoint.dir=null",
        "precision.dtype=bf16", "train.iterations=3", "schedule.warmup_iterations=0")))

    # 5. a NaN loss in step 2: skipped (and counted), or the run stops naming the step and its samples
    class NaNTrainer(loop.Trainer):
        def loss_func(self, loss_mask, per_token_loss):
            total, count, report = super().loss_func(loss_mask, per_token_loss)
            if self.iteration == 1:
                total = total * float("nan")
                report = {k: v * float("nan") for k, v in report.items()}
            return total, count, report

    for policy in ("skip", "stop"):
        trainer = NaNTrainer(config(work, f"nan_{policy}", "train.iterations=3", "checkpoint.dir=null",
                                    f"train.on_nonfinite_loss={policy}"))
        try:
            out[f"nan_{policy}"] = [{k: r[k] for k in ("step", "loss", "skipped", "skipped_steps", "lr")}
                                    for r in trainer.train()["records"]]
        except loop.NonFiniteLossError as e:
            out[f"nan_{policy}"] = str(e)
        finally:
            trainer.close()
    # 6. keep_last never prunes the weights-only checkpoint the run started from (same directory)
    loop.run(config(work, "protect", "checkpoint.keep_last=1", "checkpoint.save_interval=2", "train.iterations=4"))
    out["protect_after"] = sorted(p.name for p in (work / "protect" / "ckpt").glob("iter_*"))

    # 7. throughput over intervals that do not divide each other (log every 3, validate every 2, save at 4,
    # 8 steps): only step time counts, partial intervals divide by their own steps
    class TimedTrainer(loop.Trainer):
        durations = []

        def train_step(self, iterators):
            start = time.perf_counter()
            time.sleep(0.1)  # dominate the step so that the timing outside and inside agree closely
            result = super().train_step(iterators)
            self.durations.append(time.perf_counter() - start)
            return result

        def evaluate(self):
            time.sleep(0.5)
            return super().evaluate()

    trainer = TimedTrainer(config(work, "timed", "logging.interval=3", "validation.interval=2"))
    logged = [r for r in trainer.train()["records"] if "tokens_per_s" in r]
    trainer.close()
    out["throughput"] = [{"step": r["step"], "tokens_per_s": r["tokens_per_s"], "step_time_s": r["step_time_s"]}
                         for r in logged]
    out["step_durations"] = TimedTrainer.durations
    out["step_tokens"] = 4 * 64

    # 8. a resumed run whose config changed the schedule: warned (both values), kept, or applied on request
    messages = []
    original = metrics.MetricsLogger.message
    metrics.MetricsLogger.message = lambda self, text: (messages.append(text), original(self, text))
    for name, override in (("kept", "false"), ("override", "true")):
        shutil.copytree(work / "full" / "ckpt", work / name / "ckpt")
        result = loop.run(config(work, name, "train.iterations=10", "optimizer.lr=2e-3",
                                 f"checkpoint.override_schedule={override}"))
        out[f"schedule_{name}"] = {"lr": result["records"][0]["lr"],
                                   "warnings": [m for m in messages if m.startswith("WARNING: schedule")]}
        messages.clear()
    metrics.MetricsLogger.message = original
    return out


if __name__ == "__main__":
    work, mode = Path(sys.argv[1]), sys.argv[2]
    if mode == "killsave":
        killsave(work)
    else:
        (work / "single.json").write_text(json.dumps(main(work), indent=1))
