"""The command-line entry points, installed as ``megatron_tibetan.tools`` so that ``pip install`` puts
them on PATH (``megatron-tibetan-preprocess`` and the others in setup.py); from a checkout they also run
as ``python tools/NAME.py``."""
