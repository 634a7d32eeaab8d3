"""HF checkpoint -> Megatron checkpoint directory (any TP/PP), and back.

Import runs on every rank of a TP x PP job (``tools/convert_checkpoint.py`` starts ``torchrun`` itself
when TP x PP > 1; a single process for TP=PP=1): each rank builds its GPTModel shard, fills it from the
HF tensors through the family's table (reading one tensor at a time from safetensors), and the ranks
save together with ``dist_checkpointing`` (torch_dist). That format stores global tensors, so the
checkpoint loads at any other TP/PP. Export loads the checkpoint at TP=1, PP=1 in one process (the
resharding is dist_checkpointing's) and writes config.json + safetensors that ``transformers`` loads.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import torch

from megatron_tibetan import checkpoint_dir
from megatron_tibetan.convert.hf_io import HFSource, ShardWriter
from megatron_tibetan.convert.weights import check_hf_names, hf_tensors_from_model, load_hf_into_model
from megatron_tibetan.distributed import init_parallel
from megatron_tibetan.models.families import family_of
from megatron_tibetan.models.gpt import (
    DTYPE_NAMES,
    DTYPES,
    build_gpt_model,
    check_parallel,
    load_model_spec_dir,
    make_model_spec,
    spec_family,
)


def _rank() -> int:
    return torch.distributed.get_rank() if torch.distributed.is_initialized() else 0


def _log(message: str) -> None:
    if _rank() == 0:
        print(f"[convert] {message}", flush=True)


def extend_vocabulary(source: HFSource, tokenizer: str, method: str = "subtoken_mean") -> dict:
    """Resize ``source``'s embedding (and untied output layer) for an extended tokenizer; return the new
    HF config. Base rows stay bit-identical; new rows come from ``tokenizer.embeddings.init_new_embeddings``
    (the hook: ``method`` "subtoken_mean" or "mean")."""
    from megatron_tibetan.tokenizer.base import load_tokenizer
    from megatron_tibetan.tokenizer.embeddings import init_new_embeddings

    config = dict(source.config)
    rows = config["vocab_size"]
    extended = load_tokenizer(tokenizer)
    base_spec = _extension_base(tokenizer) or (source.tokenizer_spec() if source.has_tokenizer() else None)
    if len(extended) <= rows and base_spec is None:
        return config  # a tokenizer that fits the checkpoint as it is
    if base_spec is None:
        raise ValueError(f"tokenizer {tokenizer} has {len(extended)} tokens, the checkpoint {rows} embedding rows, and "
                         "neither the tokenizer (extension.json) nor the checkpoint names the base tokenizer")
    base = load_tokenizer(base_spec)
    if len(base) > rows:
        raise ValueError(f"base tokenizer {base_spec} has {len(base)} tokens but the checkpoint only {rows} "
                         "embedding rows: tokenizer and checkpoint do not match")
    new_rows = max(rows, len(extended))
    for name in family_of(config).vocab_tensor_names(tied=bool(config.get("tie_word_embeddings"))):
        source.overrides[name] = init_new_embeddings(base, extended, source.get(name), method, new_rows)
    config["vocab_size"] = new_rows
    _log(f"vocabulary {rows} -> {new_rows} rows ({len(extended) - len(base)} new tokens, {method} init)")
    return config


def _extension_base(tokenizer: str) -> str | None:
    path = Path(tokenizer) / "extension.json"
    return json.loads(path.read_text())["base"] if path.is_file() else None


def _absolute(spec: str) -> str:
    # presets stay names; paths are recorded absolute so model.json works from any directory
    return str(Path(spec).resolve()) if Path(spec).exists() else spec


def _check_tokenizer_fits(tokenizer: str, vocab_size: int) -> None:
    from megatron_tibetan.tokenizer.base import load_tokenizer

    n = len(load_tokenizer(tokenizer))
    if n > vocab_size:
        raise ValueError(f"tokenizer {tokenizer} has {n} tokens but the checkpoint has {vocab_size} embedding rows "
                         "(pass the base checkpoint's extended tokenizer with --tokenizer to resize)")


def import_hf(src: str | Path, output: str | Path, tp: int = 1, pp: int = 1, tokenizer: str | None = None,
              init_method: str = "subtoken_mean") -> dict:
    """Convert an HF checkpoint into a Megatron checkpoint directory; run on all TP x PP ranks. Returns the spec."""
    start = time.perf_counter()
    if checkpoint_dir.has_checkpoint(output) or checkpoint_dir.iteration_dir(output, 0).exists():
        raise FileExistsError(f"{output} already holds a Megatron checkpoint; choose a new directory")
    source = HFSource(src)
    family = family_of(source.config)  # checked before any weights are read
    config = extend_vocabulary(source, tokenizer, init_method) if tokenizer else source.config
    tokenizer_spec = _absolute(tokenizer) if tokenizer else (source.tokenizer_spec() if source.has_tokenizer() else None)
    if tokenizer_spec and not tokenizer:
        _check_tokenizer_fits(tokenizer_spec, config["vocab_size"])
    spec = make_model_spec(config, tokenizer=tokenizer_spec)
    check_parallel(config, spec["padded_vocab_size"], tp, pp)
    skipped = check_hf_names(source.names() | set(source.overrides), spec, str(source.dir))
    dtype = source.get(family.embedding.hf_names[0]).dtype
    if dtype not in DTYPE_NAMES:
        raise ValueError(f"{source.dir}: weights in {dtype}; expected one of {sorted(DTYPES)}")
    spec["params_dtype"] = DTYPE_NAMES[dtype]
    init_parallel(tp, pp)
    world = torch.distributed.get_world_size()
    if world != tp * pp:
        raise ValueError(f"import runs on exactly TP x PP = {tp * pp} ranks, got {world}")
    model = build_gpt_model(spec, perform_initialization=False)  # every weight is overwritten
    load_hf_into_model(model, source, spec)
    checkpoint_dir.save_iteration(output, 0, checkpoint_dir.model_sharded_state([model]), spec=spec)
    if skipped:
        _log(f"HF tensors not converted (buffers / tied duplicate): {', '.join(skipped)}")
    _log(f"{src} -> {output} (TP={tp}, PP={pp}) in {time.perf_counter() - start:.1f} s")
    return spec


def export_hf(megatron_dir: str | Path, output: str | Path, max_shard_bytes: int = 2 * 1024**3) -> Path:
    """Write ``megatron_dir``'s latest checkpoint as an HF directory (config.json, safetensors, tokenizer)."""
    from tqdm import tqdm

    start = time.perf_counter()
    spec = load_model_spec_dir(megatron_dir)
    init_parallel(1, 1)
    model = build_gpt_model(spec, perform_initialization=False)  # every weight is loaded
    checkpoint_dir.load_model_weights(megatron_dir, [model])
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    writer = ShardWriter(out, max_shard_bytes)
    dtype = DTYPES[spec.get("params_dtype", "float32")]
    for name, tensor in tqdm(hf_tensors_from_model(model, spec), desc="export", unit=" tensors"):
        writer.add(name, tensor.to(dtype))  # megatron keeps torch norms in float32 whatever params_dtype is
    writer.close()
    (out / "config.json").write_text(json.dumps(hf_config_for_export(spec), indent=2) + "\n")
    if spec.get("tokenizer"):
        from megatron_tibetan.tokenizer.base import load_tokenizer

        try:
            load_tokenizer(spec["tokenizer"]).save_pretrained(str(out))
            sentencepiece = Path(spec["tokenizer"]) / "tokenizer.model"
            if sentencepiece.is_file():  # the slow model file sentencepiece users and llama.cpp read
                shutil.copy2(sentencepiece, out / "tokenizer.model")
        except (OSError, ValueError) as error:  # the weights are still good; say what is missing
            _log(f"WARNING: tokenizer {spec['tokenizer']!r} from model.json not copied ({error}); pass one to the consumer")
    _log(f"{megatron_dir} -> {out} in {time.perf_counter() - start:.1f} s")
    return out


def hf_config_for_export(spec: dict) -> dict:
    config = dict(spec["hf_config"])
    config["architectures"] = [spec_family(spec).architecture]
    config["dtype"] = spec.get("params_dtype", "float32")
    config.pop("torch_dtype", None)
    config.pop("_name_or_path", None)
    return config
