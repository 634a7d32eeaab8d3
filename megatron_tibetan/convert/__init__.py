"""HF <-> Megatron checkpoint conversion, driven by each family's weight table (models/families/)."""

from megatron_tibetan.convert.api import export_hf, extend_vocabulary, import_hf
from megatron_tibetan.convert.weights import MissingTensorsError

__all__ = ["MissingTensorsError", "export_hf", "extend_vocabulary", "import_hf"]
