"""The training loop shared by continual pretraining and SFT, on megatron-core's pieces.

Read top to bottom: :class:`Trainer` sets up (device and parallel state, model spec, checks, model,
optimizer, schedule, checkpoint, data, metrics), :meth:`Trainer.train_step` runs one global batch through
megatron-core's pipeline schedule, :meth:`Trainer.train` loops, logs, validates, saves, and stops on the
exit signal. Each concern lives in its own module: ``model.py`` (which model, DDP wrapping),
``optim.py``, ``checkpoint.py`` (training state), ``signals.py``, ``metrics.py`` (throughput, logging),
``checks.py`` (start-up checks).

What a stage changes is its data (``data.kind``, :mod:`megatron_tibetan.training.data`): datasets whose
items are dicts of ``tokens``, ``labels``, ``loss_mask`` and ``position_ids`` tensors (megatron-core's
GPTDataset for CPT; SFT examples with only the assistant's tokens in ``loss_mask``, packed ones also with
``cu_seqlens``). The loss is the mean over unmasked tokens of the whole global batch
(``calculate_per_token_loss``), so gradient accumulation, packing and the data-parallel size do not change it.
"""

from __future__ import annotations

import math
import random
import time
from functools import partial
from pathlib import Path

import numpy
import torch
import yaml

from megatron_tibetan import checkpoint_dir
from megatron_tibetan.config import ConfigError, TrainingConfig, config_to_yaml, run_differences
from megatron_tibetan.training import checkpoint as ckpt
from megatron_tibetan.training import checks
from megatron_tibetan.training.data import build_data
from megatron_tibetan.training.metrics import MetricsLogger, Throughput, flops_per_token, peak_flops
from megatron_tibetan.training.model import build_model_chunks, resolve_model_spec
from megatron_tibetan.training.optim import build_optimizer, build_scheduler
from megatron_tibetan.training.signals import ExitSignal, shield_checkpoint_writer


class NonFiniteLossError(RuntimeError):
    pass


def set_seed(seed: int) -> None:
    """Megatron's convention: one seed per pipeline stage; TP ranks fork their own streams from it."""
    from megatron.core import parallel_state
    from megatron.core.tensor_parallel import model_parallel_cuda_manual_seed

    seed = seed + 100 * parallel_state.get_pipeline_model_parallel_rank()
    random.seed(seed)
    numpy.random.seed(seed)
    torch.manual_seed(seed)
    model_parallel_cuda_manual_seed(seed)


class Trainer:
    def __init__(self, cfg: TrainingConfig):
        from megatron.core import parallel_state

        from megatron_tibetan.data.pretraining import DatasetTokenizer, check_cpt_data
        from megatron_tibetan.data.sft_dataset import check_sft_data
        from megatron_tibetan.distributed import init_parallel, world

        self.run_config = cfg  # ours (TrainingConfig); megatron-core's is self.transformer_config
        p = cfg.parallel
        self.device = checks.resolve_device(cfg)
        self.use_te = checks.use_transformer_engine(cfg, self.device)
        checks.check_device(cfg, self.device, self.use_te)
        precision_note = checks.resolve_precision(cfg, self.device)
        self.dp_size = checks.check_world(cfg, world()[1])
        if cfg.data.kind == "gpt":  # fail on missing or damaged data before anything is built
            check_cpt_data(cfg)
        else:
            check_sft_data(str(cfg.data.paths[0]), cfg.data.build_command)
        init_parallel(p.tensor_model_parallel_size, p.pipeline_model_parallel_size, seed=cfg.train.seed,
                      device=self.device, vpp=p.virtual_pipeline_model_parallel_size)
        self.rank = torch.distributed.get_rank()
        self.dp_rank = parallel_state.get_data_parallel_rank()
        self.torch_device = torch.device("cuda", torch.cuda.current_device()) if self.device == "cuda" else torch.device("cpu")
        set_seed(cfg.train.seed)
        log_dir = Path(cfg.logging.dir)
        self.metrics = MetricsLogger(log_dir, enabled=self.rank == 0, tensorboard=cfg.logging.tensorboard,
                                     progress=cfg.logging.progress, total=cfg.train.iterations)
        self.packed = cfg.data.kind == "sft" and cfg.data.pack
        if precision_note:
            self.metrics.message(precision_note)
        if cfg.checkpoint.dir:  # before the first save: the writer's helpers then outlive a group-wide stop signal
            note = shield_checkpoint_writer(cfg.train.exit_signals)
            if note:
                self.metrics.message(f"note: {note}")

        # the model, and the tokenizer its ids mean (the checkpoint's unless data.tokenizer says otherwise)
        self.lock = None
        if cfg.checkpoint.dir:  # one writer per checkpoint directory
            self._take_lock(cfg.checkpoint.dir)
        self.spec, self.load_from = resolve_model_spec(cfg, self.metrics.message)
        tokenizer = checks.resolve_tokenizer(cfg, self.spec, self.metrics.message)
        self.tokenizer = DatasetTokenizer.from_spec(tokenizer)
        self.spec["tokenizer"] = self.spec.get("tokenizer") or tokenizer
        checks.check_model(cfg, self.spec, self.tokenizer.vocab_size)
        checks.check_dataset_tokenizer(cfg, self.tokenizer)

        # the data (it fixes the run's length for SFT epochs), then the model, optimizer and schedule
        self.num_microbatches = cfg.batch.global_batch_size // (cfg.batch.micro_batch_size * self.dp_size)
        data = build_data(cfg, self.tokenizer, self.dp_size)
        self.train_data, self.valid_data = data.train, data.valid
        self.iterations, self.valid_iterations = data.iterations, data.valid_iterations
        for note in data.notes:
            self.metrics.message(note)
        if self.metrics.bar is not None:
            self.metrics.bar.total = self.iterations
        self.model = build_model_chunks(cfg, self.spec, self.device, self.use_te)
        self.transformer_config = checkpoint_dir.unwrap(self.model[0]).config  # megatron-core's TransformerConfig
        self.optimizer = build_optimizer(cfg, self.model)
        self.scheduler = build_scheduler(cfg, self.optimizer, self.iterations)

        self.iteration, self.consumed_samples, self.skipped_steps = 0, 0, 0
        self.start_checkpoint = None  # a weights-only start (e.g. a converted iter_0000000): never pruned
        self.nothing_to_do = None  # why this run has no step to take (its checkpoint is at the end), else None
        if self.load_from is not None:
            self._load(self.load_from)
        self.config_text = config_to_yaml(cfg)
        if self.rank == 0:
            (log_dir / "config.yaml").write_text(self.config_text)

        hf = self.spec["hf_config"]
        self.throughput = Throughput(flops_per_token(hf, cfg.data.seq_length), peak_flops(), self.device,
                                     torch.distributed.get_world_size())
        self.metrics.message(
            f"model {self.spec['family']} {hf['num_hidden_layers']} layers hidden {hf['hidden_size']}; "
            f"TP {p.tensor_model_parallel_size} PP {p.pipeline_model_parallel_size} DP {self.dp_size}; "
            f"{self.num_microbatches} micro-batches of {cfg.batch.micro_batch_size} x {cfg.data.seq_length} "
            f"tokens per step; device {self.device}{' (Transformer Engine)' if self.use_te else ''}; "
            f"start at iteration {self.iteration}" + (f" from {self.load_from}" if self.load_from else "")
        )
        self._report_resume(cfg)

    def _take_lock(self, root) -> None:
        """Rank 0 takes the directory's lock; every rank stops with its message when another run holds it."""
        result = [None]
        if self.rank == 0:
            try:
                self.lock, warning = checkpoint_dir.acquire_lock(root)
                result = [(warning, None)]
            except checkpoint_dir.CheckpointLocked as error:
                result = [(None, str(error))]
        torch.distributed.broadcast_object_list(result, src=0)
        warning, error = result[0]
        if error:
            raise checkpoint_dir.CheckpointLocked(error)
        if warning:
            self.metrics.message(warning)

    def _report_resume(self, cfg: TrainingConfig) -> None:
        """One line when resuming this run's own directory means something other than continuing: the
        directory was written by a run with another layout or config, or it is already at the end."""
        c = cfg.checkpoint
        if self.load_from is None or c.dir is None or Path(self.load_from).parent.resolve() != Path(c.dir).resolve():
            return
        saved = Path(self.load_from) / checkpoint_dir.CONFIG
        if saved.is_file():
            changed = run_differences(yaml.safe_load(saved.read_text()) or {}, yaml.safe_load(self.config_text))
            if changed:
                self.metrics.message(f"NOTE: resuming {c.dir}, written by a run with another config ({'; '.join(changed)}); "
                                     "set checkpoint.dir to a new directory to start a separate run")
        if self.iteration >= self.iterations:
            self.nothing_to_do = (
                f"nothing to train: {c.dir} already holds iteration {self.iteration} and the run ends at "
                f"{self.iterations} (train.iterations); raise train.iterations to continue this run (the schedule is "
                "the checkpoint's unless checkpoint.override_schedule=true), or set checkpoint.dir to a new "
                "directory to start another")

    def _load(self, path: Path) -> None:
        """Resume (this run's own checkpoint, or ``checkpoint.load`` without ``finetune``) or load weights only."""
        c = self.run_config.checkpoint
        resuming_own = c.dir is not None and path.parent.resolve() == Path(c.dir).resolve()
        if (resuming_own or not c.finetune) and ckpt.has_training_state(path):
            state, changed = ckpt.load_checkpoint(path, self.model, self.optimizer, self.scheduler,
                                                  override_schedule=c.override_schedule)
            for name, (saved, configured) in changed.items():
                action = "the config's value applies (checkpoint.override_schedule)" if c.override_schedule else (
                    "the checkpoint's value is kept; set checkpoint.override_schedule=true to apply the config")
                self.metrics.message(f"WARNING: schedule setting {name} is {saved} in {path} but {configured} in "
                                     f"the config: {action}")
            self.iteration = state["iteration"]
            self.consumed_samples = state["consumed_samples"]
            self.skipped_steps = state.get("skipped_steps", 0)
            if self.consumed_samples != self.iteration * self.run_config.batch.global_batch_size:
                raise ConfigError(
                    f"{path}: {self.consumed_samples} samples consumed in {self.iteration} iterations, but "
                    f"batch.global_batch_size is {self.run_config.batch.global_batch_size}: resume with the same global batch"
                )
            if self.metrics.bar is not None:
                self.metrics.bar.n = self.iteration
        else:
            checkpoint_dir.load_model_weights(path, self.model)
            self.start_checkpoint = path
            # a bf16 model's fp32 master copy in the optimizer was made from the initial weights
            self.optimizer.reload_model_params()

    # --- one step ----------------------------------------------------------------------------------------

    def forward_step(self, data_iterator, model):
        """megatron-core's forward_step_func: the model's per-token loss and how to reduce it."""
        batch = next(data_iterator)
        tokens = batch["tokens"]
        if tokens.max() >= self.spec["padded_vocab_size"]:
            raise ValueError(f"token id {int(tokens.max())} in samples {batch['sample_indices'].tolist()} is beyond "
                             f"the model's vocabulary ({self.spec['padded_vocab_size']})")
        dev = self.torch_device
        packed = {}
        if self.packed:  # several examples in one sequence: attention and RoPE restart at each (THD)
            from megatron_tibetan.data.sft_dataset import packed_seq_params

            packed["packed_seq_params"] = packed_seq_params({k: v.to(dev) for k, v in batch.items()})
        elif "length" in batch and self.transformer_config.pipeline_model_parallel_size == 1:
            from megatron_tibetan.data.sft_dataset import trim_padding

            batch = trim_padding(batch)  # padded SFT: no compute on columns past the longest example
        output = model(
            batch["tokens"].to(dev),
            batch["position_ids"].to(dev),
            attention_mask=None,
            labels=batch["labels"].to(dev),
            **packed,
        )
        return output, partial(self.loss_func, batch["loss_mask"].to(dev))

    @staticmethod
    def loss_func(loss_mask, per_token_loss):
        mask = loss_mask.reshape(-1).float()
        total = (per_token_loss.reshape(-1).float() * mask).sum()
        count = mask.sum()
        return total, count.to(torch.int), {"lm loss": torch.stack([total.detach(), count])}

    def _run_schedule(self, iterators, num_microbatches: int, forward_only: bool):
        from megatron.core.pipeline_parallel import get_forward_backward_func

        return get_forward_backward_func()(
            forward_step_func=self.forward_step,
            data_iterator=iterators,
            model=self.model,
            num_microbatches=num_microbatches,
            seq_length=self.run_config.data.seq_length,
            micro_batch_size=self.run_config.batch.micro_batch_size,
            forward_only=forward_only,
        )

    def _reduce_loss(self, losses: list) -> tuple[float, float]:
        """(mean loss over unmasked tokens, token count) of a schedule's output, the same on every rank."""
        from megatron.core import parallel_state

        local = torch.zeros(2, dtype=torch.float64, device=self.torch_device)
        if parallel_state.is_pipeline_last_stage(ignore_virtual=True) and parallel_state.get_tensor_model_parallel_rank() == 0:
            for item in losses:
                local += item["lm loss"].to(torch.float64)
        torch.distributed.all_reduce(local)  # only one rank per data-parallel replica contributed
        total, count = local.tolist()
        return (total / count if count else float("nan")), count

    def _iterators(self, dataset, consumed: int):
        from megatron_tibetan.data.pretraining import MicroBatches

        def one():
            return MicroBatches(dataset, self.run_config.batch.micro_batch_size, self.dp_rank, self.dp_size, consumed)

        return one() if len(self.model) == 1 else [one() for _ in self.model]

    def train_step(self, iterators) -> dict:
        """One optimizer step on one global batch; a non-finite loss skips the update or stops the run."""
        for m in self.model:
            m.zero_grad_buffer()
        self.optimizer.zero_grad()
        lr = self._lr()  # the rate this step uses (the scheduler moves after the update)
        losses = self._run_schedule(iterators, self.num_microbatches, forward_only=False)
        loss, tokens = self._reduce_loss(losses)
        first = self.consumed_samples
        self.consumed_samples += self.run_config.batch.global_batch_size
        if not math.isfinite(loss):
            batch = f"samples {first}..{self.consumed_samples - 1} of the training dataset"
            where = f"non-finite loss {loss} at iteration {self.iteration + 1} ({batch})"
            if self.run_config.train.on_nonfinite_loss == "stop":
                raise NonFiniteLossError(where)
            self.skipped_steps += 1
            self._skipped_in_a_row += 1
            self.metrics.message(f"{where}: update skipped ({self._skipped_in_a_row} in a row)")
            if self._skipped_in_a_row > self.run_config.train.max_skipped_steps:
                raise NonFiniteLossError(f"{where}: more than train.max_skipped_steps={self.run_config.train.max_skipped_steps} skipped in a row")
            return {"loss": loss, "lr": lr, "grad_norm": float("nan"), "tokens": tokens, "skipped": True}
        self._skipped_in_a_row = 0
        _, grad_norm, _ = self.optimizer.step()
        self.scheduler.step(increment=1)
        return {"loss": loss, "lr": lr, "grad_norm": float(grad_norm) if grad_norm is not None else float("nan"),
                "tokens": tokens, "skipped": False}

    # --- validation and saving ---------------------------------------------------------------------------

    def _param_gather_hooks(self, enable: bool) -> None:
        """With overlapped parameter all-gather (distributed optimizer), gather eagerly around eval and save."""
        if self.run_config.parallel.overlap_param_gather:
            for m in self.model:
                m.enable_forward_pre_hook() if enable else m.disable_forward_pre_hook()

    def evaluate(self) -> dict:
        """Loss and perplexity on the first ``validation.iterations`` micro-batches per data-parallel rank."""
        self._param_gather_hooks(False)
        for m in self.model:
            m.eval()
        with torch.no_grad():
            losses = self._run_schedule(self._iterators(self.valid_data, 0), self.valid_iterations, forward_only=True)
        for m in self.model:
            m.train()
        self._param_gather_hooks(True)
        loss, tokens = self._reduce_loss(losses)
        return {"step": self.iteration, "loss": loss, "ppl": math.exp(min(loss, 50.0)), "tokens": tokens}

    def save(self) -> None:
        c = self.run_config.checkpoint
        if not c.dir:
            return
        state = {"consumed_samples": self.consumed_samples, "skipped_steps": self.skipped_steps}
        self._param_gather_hooks(False)
        started = time.perf_counter()
        path = ckpt.save_checkpoint(c.dir, self.iteration, self.model, self.optimizer, self.scheduler, state,
                                    spec=self.spec, config_text=self.config_text, keep_last=c.keep_last,
                                    protect=(self.start_checkpoint,) if self.start_checkpoint else ())
        self._param_gather_hooks(True)
        self.metrics.message(f"saved {path} in {time.perf_counter() - started:.1f} s")

    # --- the loop ----------------------------------------------------------------------------------------

    def train(self) -> dict:
        """Run to the run's iterations; returns the per-step records (also in ``logging.dir/metrics.jsonl``)."""
        cfg = self.run_config
        if self.nothing_to_do:
            self.metrics.message(self.nothing_to_do)
            self.metrics.close()
            return {"records": [], "iteration": self.iteration, "stopped_by_signal": False, "nothing_to_do": self.nothing_to_do}
        exit_signal = ExitSignal(cfg.train.exit_signals)
        self._skipped_in_a_row = 0
        iterators = self._iterators(self.train_data, self.consumed_samples)
        step_tokens = cfg.batch.global_batch_size * cfg.data.seq_length
        records, stopped, saved_at = [], False, None
        try:
            if cfg.validation.at_start and self.valid_data is not None:
                self.metrics.log(self.evaluate(), split="valid")
            while self.iteration < self.iterations:
                out = self.throughput.step(lambda: self.train_step(iterators), step_tokens)
                self.iteration += 1
                record = {"step": self.iteration, "loss": out["loss"], "lr": out["lr"], "grad_norm": out["grad_norm"],
                          "skipped": out["skipped"], "skipped_steps": self.skipped_steps,
                          "consumed_samples": self.consumed_samples}
                records.append(record)
                if self.iteration % cfg.logging.interval == 0 or self.iteration == self.iterations:
                    record.update(self.throughput.report())
                    self.metrics.log(record)
                v = cfg.validation
                if v.interval and self.valid_data is not None and self.iteration % v.interval == 0:
                    self.metrics.log(self.evaluate(), split="valid")
                if exit_signal.agreed(self.torch_device):
                    name = exit_signal.received or "an exit signal (on another rank)"
                    self.metrics.message(f"{name} received: saving at iteration {self.iteration} and exiting")
                    self.save()
                    stopped = True
                    break
                if cfg.checkpoint.save_interval and self.iteration % cfg.checkpoint.save_interval == 0:
                    self.save()
                    saved_at = self.iteration
            if not stopped and cfg.checkpoint.save_at_end and saved_at != self.iteration and (records or self.iteration == 0):
                self.save()
        finally:
            exit_signal.restore()
            self.metrics.close()
        return {"records": records, "iteration": self.iteration, "stopped_by_signal": stopped}

    def _lr(self) -> float:
        from megatron.core.optimizer_param_scheduler import get_canonical_lr_for_logging

        lr = get_canonical_lr_for_logging(self.optimizer.param_groups)
        return float(lr if lr is not None else self.optimizer.param_groups[0]["lr"])

    def close(self) -> None:
        """Release the checkpoint directory's lock and megatron-core's model-parallel groups (the process group
        stays for another run)."""
        from megatron.core import parallel_state

        if self.lock is not None:
            checkpoint_dir.release_lock(self.lock)
            self.lock = None
        parallel_state.destroy_model_parallel()


def run(cfg: TrainingConfig) -> dict:
    trainer = Trainer(cfg)
    try:
        return trainer.train()
    finally:
        trainer.close()
