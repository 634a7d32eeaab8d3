"""HF <-> Megatron checkpoint conversion, declared as one mapping table per family (families.py)."""

from megatron_tibetan.convert.api import (
    export_hf,
    extend_vocabulary,
    import_hf,
    load_checkpoint_weights,
    save_checkpoint,
)
from megatron_tibetan.convert.families import TABLES, table
from megatron_tibetan.convert.weights import MissingTensorsError

__all__ = [
    "MissingTensorsError",
    "TABLES",
    "export_hf",
    "extend_vocabulary",
    "import_hf",
    "load_checkpoint_weights",
    "save_checkpoint",
    "table",
]
