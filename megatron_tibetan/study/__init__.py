"""The two-stage study end to end, as the commands a user types: ``python -m megatron_tibetan.study`` (``make demo``).

Stages, each the project's own command (listed in the report, so a run is also the tutorial):
Tibetan-extended tokenizer trained on the shared monolingual corpus (fertility of base and extended on
FLORES dev) -> CPT data -> SFT data (zh->bo, en->bo) -> SmolLM2-135M imported with the extended
vocabulary (sub-token-mean rows) -> continual pretraining (CPT) -> SFT from the CPT checkpoint (``cpt_sft``)
and, with the same data and steps, from the imported base (``sft``, the single-stage ablation) -> export
to Hugging Face -> bits per byte and zh->bo / en->bo translation of the arms on a fixed FLORES-200 dev
subset -> layer-wise analysis -> ``OUT/report.md`` and ``OUT/report.json``
(:mod:`megatron_tibetan.evaluation.study_report`).

A stage that finished leaves ``OUT/stages/<key>.json`` (its command, wall and CPU seconds, peak memory,
load average). On a rerun it is skipped when that record holds the same command, its outputs exist and
nothing it depends on ran after it; ``--force`` runs everything again. Seeds are fixed in every stage
(tokenizer training is deterministic, ``--seed`` for SFT data, ``train.seed`` in the configs, greedy
decoding, sacrebleu's fixed bootstrap seed), so a rerun reproduces the numbers.

``--tiny`` runs the same stages on a random tiny Llama with SmolLM2's tokenizer and a few steps each (the
test suite runs it end to end).
"""
