"""Tibetan text: the one normalisation, syllable segmentation, quality filters, streaming readers."""

from megatron_tibetan.text.normalize import normalize
from megatron_tibetan.text.segment import count_syllables, segment_for_bleu, syllables, tibetan_only, tibetan_ratio

__all__ = ["normalize", "syllables", "count_syllables", "segment_for_bleu", "tibetan_only", "tibetan_ratio"]
