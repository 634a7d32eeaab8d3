"""Typed configuration for training stages: YAML files plus ``key.sub=value`` overrides.

A config is a tree of dataclasses (:class:`TrainingConfig`); a YAML file sets any subset of it and the
command line overrides single values, e.g. ``parallel.tensor_model_parallel_size=2`` or
``data.paths=[runs/data/a_text_document,runs/data/b_text_document]``. Values are parsed as YAML and
checked against the field's type; an unknown key or a wrong type is an error that names the key, the
file and what was expected. Nothing here imports torch or megatron, so configs load in milliseconds.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import yaml


class ConfigError(ValueError):
    """A config value, key or combination is wrong; the message names it."""


@dataclass
class ModelConfig:
    # The model comes from `checkpoint.load` (a converted Megatron checkpoint: its model.json) or, for a
    # from-scratch run, from an HF config: a path to config.json / an HF directory, or the mapping inline.
    hf_config: Optional[Union[str, dict]] = None
    # "local" (torch layers: CPU and GPU), "transformer_engine" (GPU), or "auto" (TE when on GPU and importable)
    transformer_impl: str = "auto"
    recompute_granularity: Optional[str] = None  # None, "full" or "selective"
    recompute_num_layers: int = 1
    hidden_dropout: Optional[float] = None  # None keeps the HF config's value
    attention_dropout: Optional[float] = None


@dataclass
class DataConfig:
    # "gpt": documents of indexed datasets cut into sequences by megatron-core's GPTDataset (continual
    # pretraining); "sft": examples written by tools/prepare_sft.py (paths: its one PREFIX), trained only on
    # the assistant's tokens
    kind: str = "gpt"
    pack: bool = True  # sft: several examples per sequence, positions restarting, attention kept inside each
    # Indexed-dataset prefixes (without _text_document.bin/.idx suffix handling: give the full prefix,
    # e.g. runs/data/nanhai_smollm2_text_document), optionally weighted. Megatron's flat form
    # ["0.7", "a", "0.3", "b"] is accepted too.
    paths: list[str] = field(default_factory=list)
    weights: Optional[list[float]] = None
    split: str = "98,2,0"  # train, validation, test per mille of documents, as Megatron's --split
    seq_length: int = 1024
    seed: Optional[int] = None  # None: train.seed
    # The tokenizer the dataset was written with (eod id, vocabulary size); None: the one the checkpoint
    # was trained with (its model.json), so SFT after CPT needs no repetition.
    tokenizer: Optional[str] = None
    cache_dir: Optional[str] = None  # where GPTDataset keeps its index caches (default: beside the data)
    eod_mask_loss: bool = False
    # The command that builds the dataset; named in the error when a file is missing.
    build_command: Optional[str] = None


@dataclass
class ParallelConfig:
    tensor_model_parallel_size: int = 1
    pipeline_model_parallel_size: int = 1
    virtual_pipeline_model_parallel_size: Optional[int] = None
    sequence_parallel: bool = False
    use_distributed_optimizer: bool = False
    overlap_grad_reduce: bool = False
    overlap_param_gather: bool = False


# One precision vocabulary everywhere (configs, model.json, tools, benchmark JSON): torch's names. The
# short forms are accepted as aliases and read as the long ones.
DTYPE_ALIASES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def dtype_name(name: str) -> str:
    """``name`` in the project's precision vocabulary (``bf16`` -> ``bfloat16``; others unchanged)."""
    return DTYPE_ALIASES.get(name, name)


@dataclass
class PrecisionConfig:
    # float32 | bfloat16 (fp32, bf16: the same) | auto: bf16 where the device computes it natively, else fp32
    # (precision.py; resolved at start-up, the run's config.yaml keeps the choice)
    dtype: str = "float32"
    fp8: Optional[str] = None  # None | hybrid | e4m3 (Transformer Engine only)
    fp8_recipe: str = "delayed"  # delayed | tensorwise | mxfp8 | blockwise
    fp8_amax_history_len: int = 1024
    fp8_amax_compute_algo: str = "max"


@dataclass
class OptimizerConfig:
    name: str = "adam"  # AdamW (decoupled weight decay)
    lr: float = 3e-4
    min_lr: float = 3e-5
    weight_decay: float = 0.1
    adam_beta1: float = 0.9
    adam_beta2: float = 0.95
    adam_eps: float = 1e-8
    clip_grad: float = 1.0


@dataclass
class ScheduleConfig:
    decay_style: str = "cosine"  # cosine | linear | constant | inverse-square-root
    warmup_iterations: Optional[int] = None
    warmup_fraction: float = 0.0  # used when warmup_iterations is None
    decay_iterations: Optional[int] = None  # None: train.iterations
    init_lr: float = 0.0


@dataclass
class BatchConfig:
    micro_batch_size: int = 1
    global_batch_size: int = 8  # gradient accumulation = global / (micro * data parallel size)


@dataclass
class TrainConfig:
    iterations: Optional[int] = 100  # optimizer steps; null with train.epochs (sft)
    epochs: Optional[int] = None  # sft: passes over the training examples, which set the iterations
    seed: int = 1234
    device: str = "auto"  # auto | cpu | cuda
    on_nonfinite_loss: str = "skip"  # skip | stop: what a NaN/inf loss does to the step
    max_skipped_steps: int = 10  # stop after this many skipped steps in a row
    # signals that save at the end of the step and stop (exit status 3): the scheduler's SIGTERM, the
    # SIGUSR1 that `#SBATCH --signal=USR1@N` sends before the time limit, and Ctrl-C (a second Ctrl-C stops
    # at once without saving) (training/signals.py)
    exit_signals: list[str] = field(default_factory=lambda: ["SIGTERM", "SIGUSR1", "SIGINT"])


@dataclass
class CheckpointConfig:
    dir: Optional[str] = None  # where saves go; a run whose dir already has `latest` resumes from it
    save_interval: Optional[int] = None  # None: save only at the end and on the exit signal
    load: Optional[str] = None  # a checkpoint directory to resume (training state) or start from (weights)
    finetune: bool = False  # load weights only from `load`, ignoring its optimizer/iteration (CPT -> SFT)
    # On resume the checkpoint's LR/WD schedule is kept (a changed setting is reported); true applies the config's.
    override_schedule: bool = False
    keep_last: Optional[int] = 3  # keep this many iteration folders; None keeps all
    # a resume whose newest iteration does not match its manifest loads the newest one that does (with a
    # warning); true refuses instead
    strict_load: bool = False
    save_at_end: bool = True


@dataclass
class LoggingConfig:
    dir: str = "runs/cpt"
    interval: int = 1
    tensorboard: bool = True
    progress: bool = True  # a tqdm bar on rank 0; otherwise one line per logged step


@dataclass
class ValidationConfig:
    interval: Optional[int] = None  # None: no validation during training
    iterations: int = 10  # micro-batches per validation (per data-parallel rank)
    # Extra held-out indexed-dataset prefixes (e.g. FLORES dev); default: the data split's validation part.
    paths: Optional[list[str]] = None
    build_command: Optional[str] = None  # named when a validation path is missing
    at_start: bool = False


@dataclass
class TrainingConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    precision: PrecisionConfig = field(default_factory=PrecisionConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    batch: BatchConfig = field(default_factory=BatchConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)


CHOICES = {
    "data.kind": ("gpt", "sft"),
    "model.transformer_impl": ("auto", "local", "transformer_engine"),
    "model.recompute_granularity": (None, "full", "selective"),
    "precision.dtype": ("float32", "bfloat16", "auto"),
    "precision.fp8": (None, "hybrid", "e4m3"),
    "precision.fp8_recipe": ("delayed", "tensorwise", "mxfp8", "blockwise"),
    "optimizer.name": ("adam",),
    "schedule.decay_style": ("cosine", "linear", "constant", "inverse-square-root"),
    "train.device": ("auto", "cpu", "cuda"),
    "train.on_nonfinite_loss": ("skip", "stop"),
}


def _type_name(tp) -> str:
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


def _coerce(value: Any, tp, where: str) -> Any:
    """``value`` checked against the annotation ``tp`` (ints pass as floats; a scalar becomes a one-item list)."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        options = [arg for arg in args if arg is not type(None)]
        if len(options) == 1:  # Optional[X]: X's own message is the precise one
            return _coerce(value, options[0], where)
        for arg in options:
            try:
                return _coerce(value, arg, where)
            except ConfigError:
                pass
        raise ConfigError(f"{where}: {value!r} is not a {' or '.join(_type_name(a) for a in args)}")
    if tp is bool or tp is int:
        if tp is int and isinstance(value, bool) or not isinstance(value, tp):
            raise ConfigError(f"{where}: expected {tp.__name__}, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads 1e-5 (no dot) as a string; it is a number to anyone typing it
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return str(value)
    if tp is list or origin is list:
        items = list(value) if isinstance(value, (list, tuple)) else [value]
        (element,) = typing.get_args(tp) or (None,)
        if element is None:
            return items
        return [_coerce(item, element, f"{where}[{i}]") for i, item in enumerate(items)]
    if tp is dict or origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return value
    raise ConfigError(f"{where}: unsupported field type {tp}")


def _set(obj, dotted: str, value: Any, source: str) -> None:
    *parents, leaf = dotted.split(".")
    path = []
    for name in parents:
        path.append(name)
        if not dataclasses.is_dataclass(obj) or name not in {f.name for f in dataclasses.fields(obj)}:
            raise ConfigError(f"{source}: unknown key '{'.'.join(path)}' (known: {_known(obj)})")
        obj = getattr(obj, name)
    if not dataclasses.is_dataclass(obj):
        raise ConfigError(f"{source}: '{'.'.join(parents)}' is a value, not a section")
    hints = typing.get_type_hints(type(obj))
    if leaf not in hints:
        raise ConfigError(f"{source}: unknown key '{dotted}' (known in this section: {_known(obj)})")
    if dataclasses.is_dataclass(hints[leaf]):
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: '{dotted}' is a section; give a mapping or set {dotted}.KEY=VALUE")
        for key, sub in value.items():
            _set(getattr(obj, leaf), str(key), sub, f"{source} ({dotted})")
        return
    value = _coerce(value, hints[leaf], f"{source}: {dotted}")
    setattr(obj, leaf, value)


def _known(obj) -> str:
    return ", ".join(f.name for f in dataclasses.fields(obj))


def parse_override(text: str) -> tuple[str, Any]:
    """``'a.b=value'`` -> ``('a.b', yaml-parsed value)``."""
    if "=" not in text:
        raise ConfigError(f"override '{text}': expected KEY=VALUE, e.g. train.iterations=10")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as e:
        raise ConfigError(f"override '{text}': value is not valid YAML ({e})") from e
    return key.strip(), value


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> TrainingConfig:
    """A :class:`TrainingConfig` from a YAML file (or the defaults) with ``key.sub=value`` overrides applied."""
    cfg = TrainingConfig()
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} not found")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML ({e})") from e
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of sections ({_known(cfg)})")
        for section, values in data.items():
            _set(cfg, str(section), values, str(path))
    for text in overrides:
        key, value = parse_override(text)
        _set(cfg, key, value, f"override '{text}'")
    check_config(cfg)
    return cfg


def check_config(cfg: TrainingConfig) -> None:
    """Checks that need no hardware: choices, positivity, batch arithmetic that holds for any world size."""
    cfg.precision.dtype = dtype_name(cfg.precision.dtype)
    for dotted, allowed in CHOICES.items():
        section, key = dotted.split(".")
        value = getattr(getattr(cfg, section), key)
        if value not in allowed:
            raise ConfigError(f"{dotted}: {value!r} is not one of {', '.join(map(repr, allowed))}")
    positive = {
        "parallel.tensor_model_parallel_size": cfg.parallel.tensor_model_parallel_size,
        "parallel.pipeline_model_parallel_size": cfg.parallel.pipeline_model_parallel_size,
        "batch.micro_batch_size": cfg.batch.micro_batch_size,
        "batch.global_batch_size": cfg.batch.global_batch_size,
        "data.seq_length": cfg.data.seq_length,
        "logging.interval": cfg.logging.interval,
    }
    for key, value in positive.items():
        if value < 1:
            raise ConfigError(f"{key} must be >= 1, got {value}")
    if cfg.train.epochs is not None:
        if cfg.data.kind != "sft":
            raise ConfigError("train.epochs needs data.kind sft (a pretraining dataset has no epochs here: set train.iterations)")
        if cfg.train.iterations is not None:
            raise ConfigError(f"set one of train.epochs ({cfg.train.epochs}) and train.iterations "
                              f"({cfg.train.iterations}); set the other to null")
        if cfg.train.epochs < 1:
            raise ConfigError(f"train.epochs must be >= 1, got {cfg.train.epochs}")
    elif cfg.train.iterations is None:
        raise ConfigError("train.iterations is null: set it (or train.epochs with data.kind sft)")
    elif cfg.train.iterations < 0:
        raise ConfigError(f"train.iterations must be >= 0 (0 only saves the initial model), got {cfg.train.iterations}")
    if cfg.data.kind == "sft":
        if len(cfg.data.paths) != 1 or cfg.data.weights:
            raise ConfigError(f"data.paths: data.kind sft takes one PREFIX written by tools/prepare_sft.py, got {cfg.data.paths}")
        if cfg.data.pack and cfg.batch.micro_batch_size != 1:
            raise ConfigError("data.pack: a packed micro-batch is one sequence of several examples; set "
                              f"batch.micro_batch_size=1 (got {cfg.batch.micro_batch_size}) or data.pack=false")
        if cfg.validation.paths:
            raise ConfigError("validation.paths: data.kind sft validates on the held-out split of its PREFIX")
    if cfg.batch.global_batch_size % cfg.batch.micro_batch_size:
        raise ConfigError(
            f"batch.global_batch_size ({cfg.batch.global_batch_size}) is not a multiple of "
            f"batch.micro_batch_size ({cfg.batch.micro_batch_size})"
        )
    if cfg.checkpoint.save_interval is not None and cfg.checkpoint.save_interval < 1:
        raise ConfigError(f"checkpoint.save_interval must be >= 1 or null, got {cfg.checkpoint.save_interval}")
    if cfg.checkpoint.keep_last is not None and cfg.checkpoint.keep_last < 1:
        raise ConfigError(f"checkpoint.keep_last must be >= 1 or null, got {cfg.checkpoint.keep_last}")
    if not 0.0 <= cfg.schedule.warmup_fraction < 1.0:
        raise ConfigError(f"schedule.warmup_fraction must be in [0, 1), got {cfg.schedule.warmup_fraction}")
    if cfg.optimizer.min_lr > cfg.optimizer.lr:
        raise ConfigError(f"optimizer.min_lr ({cfg.optimizer.min_lr}) is above optimizer.lr ({cfg.optimizer.lr})")
    if cfg.model.hf_config is None and cfg.checkpoint.load is None and cfg.checkpoint.dir is None:
        raise ConfigError("no model: set model.hf_config (from scratch) or checkpoint.load (a converted checkpoint)")
    if cfg.precision.fp8 is not None and cfg.model.transformer_impl == "local":
        raise ConfigError("precision.fp8 needs model.transformer_impl transformer_engine (or auto on a GPU); the local spec has no FP8")
    if cfg.parallel.virtual_pipeline_model_parallel_size is not None and cfg.parallel.pipeline_model_parallel_size < 2:
        raise ConfigError("parallel.virtual_pipeline_model_parallel_size needs parallel.pipeline_model_parallel_size >= 2")
    import signal

    for name in cfg.train.exit_signals:
        if name not in signal.Signals.__members__ or name in ("SIGKILL", "SIGSTOP"):
            raise ConfigError(f"train.exit_signals: {name!r} is not a signal that can be caught (e.g. SIGTERM, SIGUSR1)")


def config_to_yaml(cfg: TrainingConfig) -> str:
    """The resolved config (after overrides) as YAML that :func:`load_config` reads back to the same config."""
    return yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False, allow_unicode=True)


# what makes a checkpoint directory one run: resuming it with other values is reported (TP/PP reshard,
# the rest is a different experiment written into the same directory)
RUN_KEYS = ("model.hf_config", "data.kind", "data.paths", "data.seq_length", "data.tokenizer",
            "parallel.tensor_model_parallel_size", "parallel.pipeline_model_parallel_size",
            "parallel.virtual_pipeline_model_parallel_size", "precision.dtype")


def run_differences(saved: dict, current: dict) -> list[str]:
    """``key: saved -> current`` for each of :data:`RUN_KEYS` that two resolved configs (as dicts) set apart."""
    def get(config: dict, dotted: str):
        section, key = dotted.split(".")
        value = (config.get(section) or {}).get(key)
        return dtype_name(value) if key == "dtype" and isinstance(value, str) else value

    return [f"{k} {get(saved, k)} -> {get(current, k)}" for k in RUN_KEYS if get(saved, k) != get(current, k)]


def data_blend(paths: list, weights: Optional[list], where: str = "data") -> tuple[list[str], Optional[list[float]]]:
    """(prefixes, weights or None) from a list of prefixes plus weights, or Megatron's flat "w1 p1 w2 p2" form."""
    paths = [str(p) for p in paths]
    if not paths:
        raise ConfigError(f"{where}.paths is empty: give at least one indexed-dataset prefix")

    def _is_number(s: str) -> bool:
        try:
            float(s)
            return True
        except ValueError:
            return False

    if len(paths) % 2 == 0 and all(_is_number(p) for p in paths[0::2]) and not any(_is_number(p) for p in paths[1::2]):
        if weights is not None:
            raise ConfigError(f"{where}: weights are given both in {where}.paths and {where}.weights")
        return paths[1::2], [float(w) for w in paths[0::2]]
    if weights is None:
        return paths, None
    if len(weights) != len(paths):
        raise ConfigError(f"{where}.weights has {len(weights)} values for {len(paths)} paths")
    return paths, [float(w) for w in weights]
