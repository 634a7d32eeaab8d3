"""Model families, one module each (llama.py, qwen2.py, qwen3.py): add a family by adding a module that
declares a :class:`~megatron_tibetan.models.families.base.Family` and listing it here."""

from __future__ import annotations

from megatron_tibetan.models.families import llama, qwen2, qwen3
from megatron_tibetan.models.families.base import Family, UnsupportedModelError

FAMILIES: dict[str, Family] = {f.name: f for f in (llama.FAMILY, qwen2.FAMILY, qwen3.FAMILY)}
_BY_MODEL_TYPE = {t: f for f in FAMILIES.values() for t in f.model_types}


def get_family(name: str) -> Family:
    if name not in FAMILIES:
        raise UnsupportedModelError(f"unknown model family {name!r}; known: {', '.join(sorted(FAMILIES))}")
    return FAMILIES[name]


def family_of(hf_config: dict) -> Family:
    """The family of an HF config (by its model_type), checked: UnsupportedModelError for what no family
    represents exactly."""
    model_type = hf_config.get("model_type")
    if model_type not in _BY_MODEL_TYPE:
        raise UnsupportedModelError(
            f"unsupported architecture: model_type={model_type!r} (architectures={hf_config.get('architectures')}); "
            f"supported: {', '.join(sorted(_BY_MODEL_TYPE))}"
        )
    family = _BY_MODEL_TYPE[model_type]
    family.check(hf_config)
    return family


__all__ = ["FAMILIES", "Family", "UnsupportedModelError", "family_of", "get_family"]
