from setuptools import find_packages, setup

# the commands on PATH after `pip install`: one per stage (tools/*.py, `python -m megatron_tibetan.train`)
COMMANDS = {
    "preprocess": "megatron_tibetan.tools.preprocess_data",
    "merge-datasets": "megatron_tibetan.tools.merge_datasets",
    "extend-tokenizer": "megatron_tibetan.tools.extend_tokenizer",
    "fertility": "megatron_tibetan.tools.tokenizer_fertility",
    "prepare-sft": "megatron_tibetan.tools.prepare_sft",
    "convert": "megatron_tibetan.tools.convert_checkpoint",
    "train": "megatron_tibetan.train",
    "evaluate": "megatron_tibetan.tools.evaluate",
    "analyze-layers": "megatron_tibetan.tools.analyze_layers",
    "submit": "megatron_tibetan.tools.submit",
}

setup(
    name="megatron_tibetan",
    version="0.1.0",
    description="Continual pretraining and supervised fine-tuning of open LLMs for Tibetan on megatron-core",
    # tools/ is installed as megatron_tibetan.tools, so its commands can be console scripts
    packages=[*find_packages(include=["megatron_tibetan", "megatron_tibetan.*"]), "megatron_tibetan.tools"],
    package_dir={"megatron_tibetan.tools": "tools"},
    entry_points={"console_scripts": [f"megatron-tibetan-{name} = {target}:main" for name, target in COMMANDS.items()]},
    python_requires=">=3.10",
    # torch is installed first and pinned by the Makefile (torch==2.13.0, CPU build); a range here
    # that 2.13.0 satisfies installs nothing more.
    install_requires=[
        "torch>=2.6",
        "megatron-core>=0.16.1",
        "psutil>=5.9",  # needed by megatron.core.dist_checkpointing, not declared by it
        "numpy>=1.26",
        "transformers>=5.0",  # SpmConverter.build_tokenizer_from_spm_proto(legacy=) for SentencePiece bases
        "tokenizers>=0.21",
        "safetensors>=0.4",
        "sentencepiece>=0.2",
        "protobuf>=3.20",  # sentencepiece's ModelProto (sentencepiece_model_pb2), to merge Tibetan pieces
        "sacrebleu>=2.4",
        "submitit>=1.5",
        "pyyaml>=6.0",
        "tqdm>=4.66",
        "zstandard>=0.22",
        "matplotlib>=3.8",
        "tensorboard>=2.15",
        "gguf>=0.10",  # reading the SmolLM2 GGUF preset through transformers
        "accelerate>=1.0",
        "tiktoken>=0.7",  # reading qwen.tiktoken for the qwen2.5 preset
        "regex>=2023.0",  # the tokenizers' split patterns (\p{L}, \p{M}) in preprocessing
    ],
    extras_require={
        # GPU cluster only: never installed in the CPU environment (the empty PyPI meta package
        # `transformer-engine` alone makes `import megatron.core` fail).
        "gpu": ["transformer-engine[pytorch]>=2.0"],
        "test": ["pytest>=8"],
        "fast": ["gigatoken>=0.10"],  # preprocessing's fastest encoder where it loads the tokenizer (tokenizer.encoders)
    },
)
