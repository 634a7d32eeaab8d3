"""megatron_tibetan: adapt open LLMs to Tibetan with megatron-core (continual pretraining, SFT, evaluation)."""

__version__ = "0.1.0"
