"""The training loop shared by continual pretraining and SFT, on megatron-core's pieces.

Read top to bottom: :class:`Trainer` sets up (parallel state, model spec, checks, model, DDP, optimizer,
schedule, data, checkpoint), :meth:`Trainer.train_step` runs one global batch through megatron-core's
pipeline schedule, :meth:`Trainer.train` loops, logs, validates, saves, and stops on the exit signal.

What a stage changes is its data: ``build_data(trainer) -> (train_dataset, valid_dataset or None)``,
datasets whose items are dicts of ``tokens``, ``labels``, ``loss_mask`` and ``position_ids`` tensors
(megatron-core's GPTDataset for CPT; SFT masks prompt tokens in ``loss_mask``). The loss is the mean over
unmasked tokens of the whole global batch (``calculate_per_token_loss``), so gradient accumulation and the
data-parallel size do not change it.
"""

from __future__ import annotations

import math
import random
import signal
import time
from functools import partial
from pathlib import Path

import numpy
import torch

from megatron_tibetan.config import ConfigError, TrainingConfig
from megatron_tibetan.training import checkpoint as ckpt
from megatron_tibetan.training import checks
from megatron_tibetan.training.metrics import MetricsLogger, flops_per_token, peak_flops
from megatron_tibetan.training.optim import build_optimizer, build_scheduler


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


def resolve_model_spec(cfg: TrainingConfig) -> tuple[dict, Path | None]:
    """(model spec, checkpoint folder to load or None): resume from checkpoint.dir, else checkpoint.load,
    else a from-scratch model from model.hf_config."""
    from megatron_tibetan.models.gpt import load_model_spec_dir, make_model_spec

    own = cfg.checkpoint.dir
    if own and (Path(own) / ckpt.LATEST).is_file():
        return load_model_spec_dir(own), ckpt.latest_iteration_dir(own)
    if cfg.checkpoint.load:
        return load_model_spec_dir(cfg.checkpoint.load), ckpt.latest_iteration_dir(cfg.checkpoint.load)
    hf = cfg.model.hf_config
    if hf is None:
        raise ConfigError("no model: set model.hf_config (from scratch) or checkpoint.load (a converted checkpoint)")
    if isinstance(hf, str):
        import json

        path = Path(hf) / "config.json" if Path(hf).is_dir() else Path(hf)
        if not path.is_file():
            raise ConfigError(f"model.hf_config: {path} not found")
        hf = json.loads(path.read_text())
    dtype = {"fp32": "float32", "bf16": "bfloat16"}[cfg.precision.dtype]
    return make_model_spec(hf, params_dtype=dtype, tokenizer=cfg.data.tokenizer), None


class ExitSignal:
    """Remembers that the exit signal arrived; the loop saves and stops at the end of the step."""

    def __init__(self, name: str):
        self.received = False
        self.signum = getattr(signal, name)
        self.previous = signal.signal(self.signum, self._handle)

    def _handle(self, signum, frame):
        self.received = True

    def restore(self):
        signal.signal(self.signum, self.previous)


class Trainer:
    def __init__(self, cfg: TrainingConfig, build_data=None):
        from megatron.core import parallel_state

        from megatron_tibetan.data.gpt import DatasetTokenizer
        from megatron_tibetan.models.parallel import init_parallel, world

        self.cfg = cfg
        p = cfg.parallel
        self.device = checks.resolve_device(cfg)
        self.use_te = checks.use_transformer_engine(cfg, self.device)
        checks.check_device(cfg, self.device, self.use_te)
        self.dp_size = checks.check_world(cfg, world()[1])
        if build_data is None:  # fail on missing data before the model is built
            from megatron_tibetan.config import data_blend
            from megatron_tibetan.data.gpt import check_prefixes

            check_prefixes(data_blend(cfg.data.paths, cfg.data.weights)[0], "data.paths", cfg.data.build_command)
            if cfg.validation.paths:
                check_prefixes(data_blend(cfg.validation.paths, None, "validation")[0], "validation.paths")
        init_parallel(p.tensor_model_parallel_size, p.pipeline_model_parallel_size, seed=cfg.train.seed,
                      backend="gloo" if self.device == "cpu" else None)
        if p.virtual_pipeline_model_parallel_size:
            parallel_state.destroy_model_parallel()
            parallel_state.initialize_model_parallel(p.tensor_model_parallel_size, p.pipeline_model_parallel_size,
                                                     p.virtual_pipeline_model_parallel_size)
        self.rank = torch.distributed.get_rank()
        self.dp_rank = parallel_state.get_data_parallel_rank()
        set_seed(cfg.train.seed)

        self.spec, self.load_from = resolve_model_spec(cfg)
        self.tokenizer = DatasetTokenizer.from_spec(cfg.data.tokenizer)
        checks.check_model(cfg, self.spec, self.tokenizer.vocab_size)
        self.model = self._build_model()
        self.optimizer = build_optimizer(cfg, self.model)
        self.scheduler = build_scheduler(cfg, self.optimizer)

        self.iteration, self.consumed_samples, self.skipped_steps = 0, 0, 0
        if self.load_from is not None:
            self._load(self.load_from)
        if cfg.checkpoint.dir and self.rank == 0:
            ckpt.save_model_spec(cfg.checkpoint.dir, self.spec)

        self.num_microbatches = cfg.batch.global_batch_size // (cfg.batch.micro_batch_size * self.dp_size)
        train_samples = cfg.train.iterations * cfg.batch.global_batch_size
        v = cfg.validation
        valid_samples = v.iterations * cfg.batch.micro_batch_size * self.dp_size
        build = build_data or default_build_data
        self.train_data, self.valid_data = build(self, train_samples, valid_samples)

        log_dir = Path(cfg.logging.dir)
        self.metrics = MetricsLogger(log_dir, enabled=self.rank == 0, tensorboard=cfg.logging.tensorboard,
                                     progress=cfg.logging.progress, total=cfg.train.iterations, initial=self.iteration)
        hf = self.spec["hf_config"]
        self.flops_per_token = flops_per_token(hf, cfg.data.seq_length)
        self.peak_flops = peak_flops()
        self.metrics.message(
            f"model {self.spec['family']} {hf['num_hidden_layers']} layers hidden {hf['hidden_size']}; "
            f"TP {p.tensor_model_parallel_size} PP {p.pipeline_model_parallel_size} DP {self.dp_size}; "
            f"{self.num_microbatches} micro-batches of {cfg.batch.micro_batch_size} x {cfg.data.seq_length} "
            f"tokens per step; device {self.device}{' (Transformer Engine)' if self.use_te else ''}; "
            f"start at iteration {self.iteration}" + (f" from {self.load_from}" if self.load_from else "")
        )

    # --- set-up ------------------------------------------------------------------------------------------

    def _config_overrides(self) -> dict:
        cfg = self.cfg
        m, prec = cfg.model, cfg.precision
        o = dict(
            calculate_per_token_loss=True,
            sequence_parallel=cfg.parallel.sequence_parallel,
            params_dtype=torch.bfloat16 if prec.dtype == "bf16" else torch.float32,
            pipeline_dtype=torch.bfloat16 if prec.dtype == "bf16" else torch.float32,
            bf16=prec.dtype == "bf16",
            fp16=False,
            virtual_pipeline_model_parallel_size=cfg.parallel.virtual_pipeline_model_parallel_size,
        )
        if m.hidden_dropout is not None:
            o["hidden_dropout"] = m.hidden_dropout
        if m.attention_dropout is not None:
            o["attention_dropout"] = m.attention_dropout
        if m.recompute_granularity:
            o.update(recompute_granularity=m.recompute_granularity)
            if m.recompute_granularity == "full":
                o.update(recompute_method="uniform", recompute_num_layers=m.recompute_num_layers)
        if prec.fp8:
            o.update(fp8=prec.fp8, fp8_recipe=prec.fp8_recipe, fp8_amax_history_len=prec.fp8_amax_history_len,
                     fp8_amax_compute_algo=prec.fp8_amax_compute_algo)
        return o

    def _build_model(self) -> list:
        from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig, finalize_model_grads
        from megatron.core.transformer.module import Float16Module

        from megatron_tibetan.models.gpt import build_gpt_model

        p = self.cfg.parallel
        chunks = []
        for vp in range(p.virtual_pipeline_model_parallel_size or 1):
            vp_stage = vp if p.virtual_pipeline_model_parallel_size else None
            chunks.append(build_gpt_model(self.spec, use_te=self.use_te, vp_stage=vp_stage, **self._config_overrides()))
        config = chunks[0].config
        if self.device == "cuda":
            chunks = [m.cuda(torch.cuda.current_device()) for m in chunks]
        if config.bf16:
            chunks = [Float16Module(config, m) for m in chunks]
        ddp_config = DistributedDataParallelConfig(
            grad_reduce_in_fp32=True,
            overlap_grad_reduce=p.overlap_grad_reduce,
            overlap_param_gather=p.overlap_param_gather,
            use_distributed_optimizer=p.use_distributed_optimizer,
        )
        chunks = [
            DistributedDataParallel(config=config, ddp_config=ddp_config, module=m, disable_bucketing=i > 0)
            for i, m in enumerate(chunks)
        ]
        for m in chunks:
            m.broadcast_params()  # data-parallel replicas start equal
        config.no_sync_func = chunks[0].no_sync if len(chunks) == 1 else [m.no_sync for m in chunks]
        if p.overlap_grad_reduce:
            config.grad_sync_func = chunks[0].start_grad_sync if len(chunks) == 1 else [m.start_grad_sync for m in chunks]
        config.finalize_model_grads_func = finalize_model_grads
        self.config = config
        n_params = sum(q.numel() for m in chunks for q in m.parameters())
        self.parameters_on_rank = n_params
        return chunks

    def _load(self, path: Path) -> None:
        full = not self.cfg.checkpoint.finetune or path.parent == Path(self.cfg.checkpoint.dir or "")
        state = ckpt.load_checkpoint(path, self.model, self.optimizer if full else None, self.scheduler if full else None)
        if state is None:
            # weights only: a bf16 model's fp32 master copy in the optimizer was made from the initial weights
            self.optimizer.reload_model_params()
        else:
            self.iteration = state["iteration"]
            self.consumed_samples = state["consumed_samples"]
            self.skipped_steps = state.get("skipped_steps", 0)
            if self.consumed_samples != self.iteration * self.cfg.batch.global_batch_size:
                raise ConfigError(
                    f"{path}: {self.consumed_samples} samples consumed in {self.iteration} iterations, but "
                    f"batch.global_batch_size is {self.cfg.batch.global_batch_size}: resume with the same global batch"
                )

    # --- one step ----------------------------------------------------------------------------------------

    def forward_step(self, data_iterator, model):
        """megatron-core's forward_step_func: the model's per-token loss and how to reduce it."""
        batch = next(data_iterator)
        tokens = batch["tokens"]
        if tokens.max() >= self.spec["padded_vocab_size"]:
            raise ValueError(f"token id {int(tokens.max())} in samples {batch['sample_indices'].tolist()} is beyond "
                             f"the model's vocabulary ({self.spec['padded_vocab_size']})")
        dev = torch.cuda.current_device() if self.device == "cuda" else "cpu"
        self._batch_samples.extend(batch["sample_indices"].tolist())
        output = model(
            tokens.to(dev),
            batch["position_ids"].to(dev),
            attention_mask=batch["attention_mask"].to(dev) if "attention_mask" in batch else None,
            labels=batch["labels"].to(dev),
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

        self._batch_samples = []
        return get_forward_backward_func()(
            forward_step_func=self.forward_step,
            data_iterator=iterators,
            model=self.model,
            num_microbatches=num_microbatches,
            seq_length=self.cfg.data.seq_length,
            micro_batch_size=self.cfg.batch.micro_batch_size,
            forward_only=forward_only,
        )

    def _reduce_loss(self, losses: list) -> tuple[float, float]:
        """(mean loss over unmasked tokens, token count) of a schedule's output, the same on every rank."""
        from megatron.core import parallel_state

        dev = torch.cuda.current_device() if self.device == "cuda" else "cpu"
        local = torch.zeros(2, dtype=torch.float64, device=dev)
        if parallel_state.is_pipeline_last_stage(ignore_virtual=True) and parallel_state.get_tensor_model_parallel_rank() == 0:
            for item in losses:
                local += item["lm loss"].to(torch.float64)
        torch.distributed.all_reduce(local)  # only one rank per data-parallel replica contributed
        total, count = local.tolist()
        return (total / count if count else float("nan")), count

    def _iterators(self, dataset, consumed: int):
        from megatron_tibetan.data.gpt import MicroBatches

        def one():
            return MicroBatches(dataset, self.cfg.batch.micro_batch_size, self.dp_rank, self.dp_size, consumed)

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
        self.consumed_samples += self.cfg.batch.global_batch_size
        if not math.isfinite(loss):
            batch = f"samples {first}..{self.consumed_samples - 1} of the training dataset"
            where = f"non-finite loss {loss} at iteration {self.iteration + 1} ({batch})"
            if self.cfg.train.on_nonfinite_loss == "stop":
                raise NonFiniteLossError(where)
            self.skipped_steps += 1
            self._skipped_in_a_row += 1
            self.metrics.message(f"{where}: update skipped ({self._skipped_in_a_row} in a row)")
            if self._skipped_in_a_row > self.cfg.train.max_skipped_steps:
                raise NonFiniteLossError(f"{where}: more than train.max_skipped_steps={self.cfg.train.max_skipped_steps} skipped in a row")
            return {"loss": loss, "lr": lr, "grad_norm": float("nan"), "tokens": tokens, "skipped": True}
        self._skipped_in_a_row = 0
        _, grad_norm, _ = self.optimizer.step()
        self.scheduler.step(increment=1)
        return {"loss": loss, "lr": lr, "grad_norm": float(grad_norm) if grad_norm is not None else float("nan"),
                "tokens": tokens, "skipped": False}

    # --- the loop ----------------------------------------------------------------------------------------

    def _param_gather_hooks(self, enable: bool) -> None:
        """With overlapped parameter all-gather (distributed optimizer), gather eagerly around eval and save."""
        if self.cfg.parallel.overlap_param_gather:
            for m in self.model:
                m.enable_forward_pre_hook() if enable else m.disable_forward_pre_hook()

    def evaluate(self) -> dict:
        """Loss and perplexity on the first ``validation.iterations`` micro-batches per data-parallel rank."""
        self._param_gather_hooks(False)
        for m in self.model:
            m.eval()
        with torch.no_grad():
            losses = self._run_schedule(self._iterators(self.valid_data, 0), self.cfg.validation.iterations, forward_only=True)
        for m in self.model:
            m.train()
        self._param_gather_hooks(True)
        loss, tokens = self._reduce_loss(losses)
        return {"step": self.iteration, "loss": loss, "ppl": math.exp(min(loss, 50.0)), "tokens": tokens}

    def save(self) -> None:
        c = self.cfg.checkpoint
        if not c.dir:
            return
        state = {"consumed_samples": self.consumed_samples, "skipped_steps": self.skipped_steps}
        self._param_gather_hooks(False)
        path = ckpt.save_checkpoint(c.dir, self.iteration, self.model, self.optimizer, self.scheduler, state, c.keep_last)
        self._param_gather_hooks(True)
        self.metrics.message(f"saved {path}")

    def _stop_requested(self, exit_signal: ExitSignal) -> bool:
        flag = torch.tensor([int(exit_signal.received)], device=torch.cuda.current_device() if self.device == "cuda" else "cpu")
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return bool(flag.item())

    def train(self) -> dict:
        """Run to ``train.iterations``; returns the per-step records (also in ``logging.dir/metrics.jsonl``)."""
        cfg = self.cfg
        exit_signal = ExitSignal(cfg.train.exit_signal)
        self._skipped_in_a_row = 0
        iterators = self._iterators(self.train_data, self.consumed_samples)
        records, interval_start, interval_tokens, stopped = [], time.perf_counter(), 0.0, False
        try:
            if cfg.validation.at_start and self.valid_data is not None:
                self.metrics.log(self.evaluate(), split="valid")
            while self.iteration < cfg.train.iterations:
                out = self.train_step(iterators)
                self.iteration += 1
                interval_tokens += cfg.batch.global_batch_size * cfg.data.seq_length
                record = {"step": self.iteration, "loss": out["loss"], "lr": out["lr"], "grad_norm": out["grad_norm"],
                          "skipped": self.skipped_steps, "consumed_samples": self.consumed_samples}
                records.append(record)
                if self.iteration % cfg.logging.interval == 0 or self.iteration == cfg.train.iterations:
                    elapsed = time.perf_counter() - interval_start
                    record.update(self._throughput(interval_tokens, elapsed))
                    self.metrics.log(record)
                    interval_start, interval_tokens = time.perf_counter(), 0.0
                v = cfg.validation
                if v.interval and self.valid_data is not None and self.iteration % v.interval == 0:
                    self.metrics.log(self.evaluate(), split="valid")
                    interval_start = time.perf_counter()
                if self._stop_requested(exit_signal):
                    self.metrics.message(f"{cfg.train.exit_signal} received: saving at iteration {self.iteration} and exiting")
                    self.save()
                    stopped = True
                    break
                if cfg.checkpoint.save_interval and self.iteration % cfg.checkpoint.save_interval == 0:
                    self.save()
                    interval_start = time.perf_counter()
            else:
                saved_already = self.iteration > 0 and (
                    not records or (cfg.checkpoint.save_interval and self.iteration % cfg.checkpoint.save_interval == 0))
                if cfg.checkpoint.save_at_end and not saved_already:
                    self.save()
        finally:
            exit_signal.restore()
            self.metrics.close()
        return {"records": records, "iteration": self.iteration, "stopped_by_signal": stopped}

    def _lr(self) -> float:
        from megatron.core.optimizer_param_scheduler import get_canonical_lr_for_logging

        lr = get_canonical_lr_for_logging(self.optimizer.param_groups)
        return float(lr if lr is not None else self.optimizer.param_groups[0]["lr"])

    def _throughput(self, tokens: float, seconds: float) -> dict:
        out = {"step_time_s": seconds / max(self.cfg.logging.interval, 1), "tokens_per_s": tokens / seconds}
        if self.device == "cuda":
            world = torch.distributed.get_world_size()
            tflops = self.flops_per_token * tokens / seconds / world
            out["tflops_per_device"] = tflops / 1e12
            if self.peak_flops:
                out["mfu"] = tflops / self.peak_flops
            out["max_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
        return out

    def close(self) -> None:
        """Release megatron-core's model-parallel groups (the process group stays for another run)."""
        from megatron.core import parallel_state

        parallel_state.destroy_model_parallel()


def default_build_data(trainer: Trainer, train_samples: int, valid_samples: int):
    """Continual pretraining: megatron-core GPTDatasets over ``data.paths`` (and ``validation.paths``)."""
    from megatron_tibetan.data.gpt import build_datasets

    cfg = trainer.cfg
    seed = cfg.data.seed if cfg.data.seed is not None else cfg.train.seed
    return build_datasets(cfg, train_samples, valid_samples, seed, trainer.tokenizer)


def run(cfg: TrainingConfig, build_data=None) -> dict:
    trainer = Trainer(cfg, build_data)
    try:
        return trainer.train()
    finally:
        trainer.close()
