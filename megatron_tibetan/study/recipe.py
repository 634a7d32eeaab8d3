"""The study's recipe, as data: how much of everything a run uses (:class:`Size`: ``DEMO`` for ``make demo``,
``TINY`` for the test suite), where each stage writes (:class:`Paths`), and the stages themselves
(:func:`build_stages`), each the project's own command."""

from __future__ import annotations

import os
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

from megatron_tibetan.evaluation.study_report import ARMS, SOURCE_LANGS
from megatron_tibetan.study.runner import ROOT, Stage, rel


def data_dir() -> Path:
    """The shared data: $MEGATRON_TIBETAN_DATA, else ../shared/data beside the repository."""
    return Path(os.environ.get("MEGATRON_TIBETAN_DATA") or ROOT.parent / "shared" / "data")


# Each translation stops at this many characters per character of its source: the 99th percentile of the
# Tibetan/source length ratio of the SFT pairs (NTREX-128: zh 5.93, en 1.92), rounded up. tests/test_demo.py
# recomputes it.
MAX_LENGTH_RATIO = {"zh": 6.0, "en": 2.0}


@dataclass(frozen=True)
class Size:
    """How much of everything a run uses."""

    name: str
    tokenizer_lines: int  # Nanhai lines the Tibetan tokens are trained on
    new_tokens: int  # Tibetan tokens added to SmolLM2's vocabulary
    documents: int  # Nanhai documents preprocessed for CPT
    cpt_iterations: int
    cpt_global_batch: int
    cpt_micro_batch: int
    cpt_seq_length: int
    sft_iterations: int  # the same for both SFT arms
    sft_global_batch: int  # packs per step
    sft_seq_length: int  # pack length (examples longer than this are dropped, counted)
    flores_lines: int  # per direction, the first lines of FLORES-200 dev
    ppl_lines: int  # the first lines of the subset scored for bits per byte
    max_new_tokens: int  # the token limit of every translation (MAX_LENGTH_RATIO sets the usual, shorter one)
    phrasing_lines: int  # the first lines of the subset that cpt_sft translates in every trained phrasing
    tiny_model: bool = False  # a random tiny Llama instead of SmolLM2-135M
    lr: float | None = None  # both stages' peak learning rate (None: the configs')
    replay: float = 0.0  # share of CPT samples drawn from base-language (zh, en) text instead of Tibetan
    replay_documents: int = 5000  # zh then en lines of the OpenPecha parallel files, preprocessed for replay
    precision: str = "auto"  # training and evaluation: bf16 where the CPU computes it natively, else fp32


# About 11 minutes of stages on an idle 2-core AMX machine in bf16, about 22 in fp32 on a 2-core AVX2 one
# (measured figures in docs/study.md).
DEMO = Size("demo", tokenizer_lines=30000, new_tokens=4000, documents=3000, cpt_iterations=24, cpt_global_batch=4,
            cpt_micro_batch=2, cpt_seq_length=256, sft_iterations=24, sft_global_batch=2, sft_seq_length=512,
            flores_lines=40, ppl_lines=20, max_new_tokens=128, phrasing_lines=8)
TINY = Size("tiny", tokenizer_lines=2000, new_tokens=200, documents=300, cpt_iterations=3, cpt_global_batch=2,
            cpt_micro_batch=2, cpt_seq_length=64, sft_iterations=3, sft_global_batch=2, sft_seq_length=256,
            flores_lines=6, ppl_lines=3, max_new_tokens=8, phrasing_lines=2, tiny_model=True, lr=3e-3)


@dataclass
class Paths:
    """Where each stage writes, under the run's output folder."""

    out: Path

    @property
    def tokenizer(self) -> Path:
        return self.out / "tokenizer" / "extended"

    def fertility(self, which: str) -> Path:
        return self.out / "tokenizer" / f"fertility_{which}.json"

    @property
    def cpt_data(self) -> Path:
        return self.out / "data" / "nanhai"

    @property
    def replay_data(self) -> Path:
        return self.out / "data" / "replay_zh_en"

    @property
    def sft_data(self) -> Path:
        return self.out / "data" / "sft_ntrex"

    def flores(self, lang: str, lines: int) -> Path:
        return self.out / "data" / f"flores200.dev.first{lines}.{lang}"

    @property
    def base_model(self) -> Path:
        return self.out / "base-model"

    def checkpoints(self, stage: str) -> Path:
        return self.out / "ckpt" / "init" if stage == "init" else self.out / stage / "checkpoints"

    def hf(self, arm: str) -> Path:
        return self.out / "hf" / arm

    @property
    def bpb(self) -> Path:
        return self.out / "eval" / "bpb"

    def evaluation(self, lines: int) -> Path:
        return self.out / "eval" / f"flores{lines}"


def build_stages(size: Size, out: Path, seed: int = 1234) -> list[Stage]:
    """The study's stages for ``size``, writing under ``out``."""
    py = sys.executable
    p = Paths(out)
    data = data_dir()
    d = {k: rel(v) for k, v in {
        "nanhai": data / "mono" / "nanhai.bo.txt.xz", "flores_bo": data / "eval" / "flores200.dev.bo",
        "flores_zh": data / "eval" / "flores200.dev.zh", "flores_en": data / "eval" / "flores200.dev.en",
        "ntrex": data / "parallel" / "ntrex128", "openpecha": data / "parallel" / "openpecha"}.items()}
    tok = rel(p.tokenizer)
    base = rel(p.base_model) if size.tiny_model else "smollm2"
    stages: list[Stage] = []
    # overrides both training stages take
    both_stages = [f"precision.dtype={size.precision}"]
    if size.lr:
        both_stages += [f"optimizer.lr={size.lr}", f"optimizer.min_lr={size.lr / 10}"]
    train_threads = 1 if size.tiny_model else None  # a tiny model gains nothing from threads: two stages share the cores
    if size.tiny_model:
        stages.append(Stage("tiny_model", "random tiny Llama with SmolLM2's tokenizer (the tiny study's base model)",
                            [py, "-m", "megatron_tibetan.study.tiny_model", rel(p.base_model), "--seed", str(seed)],
                            outputs=[p.base_model / "config.json"], threads=1))
    stages += [
        Stage("tokenizer", f"Tibetan-extended tokenizer: {size.new_tokens:,} tokens trained on {size.tokenizer_lines:,} Nanhai lines",
              [py, "tools/extend_tokenizer.py", "--base", "smollm2", "--num-new-tokens", str(size.new_tokens),
               "--corpus", d["nanhai"], "--max-lines-per-file", str(size.tokenizer_lines), "--output", tok],
              outputs=[p.tokenizer / "tokenizer.json"], threads=train_threads, clean=[p.tokenizer]),
    ]
    for which, spec in (("base", "smollm2"), ("extended", tok)):
        stages.append(Stage(f"fertility_{which}", f"fertility of the {which} tokenizer on FLORES-200 dev (bo, zh, en)",
                            [py, "tools/tokenizer_fertility.py", "--tokenizer", spec, "--input", d["flores_bo"],
                             d["flores_zh"], d["flores_en"], "--output", rel(p.fertility(which))],
                            outputs=[p.fertility(which)], needs=["tokenizer"] if which == "extended" else [], threads=1))
    ntrex = d["ntrex"]
    stages += [
        Stage("cpt_data", f"CPT data: the first {size.documents:,} Nanhai documents -> Megatron indexed dataset",
              [py, "tools/preprocess_data.py", "--input", d["nanhai"], "--output-prefix", rel(p.cpt_data),
               "--tokenizer", tok, "--append-eod", "--workers", "1", "--limit", str(size.documents), "--no-progress"],
              outputs=[Path(f"{p.cpt_data}_text_document.bin")], needs=["tokenizer"], threads=1),
        Stage("sft_data", "SFT data: NTREX-128 zh->bo and en->bo pairs, chat template, loss on the answers "
              "(FLORES dev excluded)",
              [py, "tools/prepare_sft.py", "--pairs", f"zh={ntrex}.zh.xz,{ntrex}.bo.xz", "--pairs", f"en={ntrex}.en.xz,{ntrex}.bo.xz",
               "--tokenizer", tok, "--output", rel(p.sft_data), "--valid-fraction", "0", "--exclude", d["flores_bo"],
               "--max-length", str(size.sft_seq_length), "--seed", str(seed), "--no-progress"],
              outputs=[Path(f"{p.sft_data}_stats.json")], needs=["tokenizer"], threads=1),
        Stage("import", "base model -> Megatron checkpoint, vocabulary extended (sub-token-mean rows)",
              [py, "tools/convert_checkpoint.py", "import", "--hf", base, "--tokenizer", tok,
               "--output", rel(p.checkpoints("init"))],
              outputs=[p.checkpoints("init") / "model.json"], needs=["tokenizer"] + (["tiny_model"] if size.tiny_model else []),
              threads=1, clean=[p.checkpoints("init")]),
    ]
    cpt_paths, replay = f"[{rel(p.cpt_data)}_text_document]", []
    if size.replay:
        # base-language text mixed into the Tibetan stream (megatron-core's blended dataset): the zh and en sides
        # of OpenPecha's parallel files, which neither SFT nor the evaluation uses
        replay = [f"data.weights=[{1 - size.replay:g},{size.replay:g}]"]
        cpt_paths = f"[{rel(p.cpt_data)}_text_document,{rel(p.replay_data)}_text_document]"
        stages.append(Stage(
            "replay_data", f"replay data: the first {size.replay_documents:,} lines of OpenPecha zh, then en -> indexed dataset",
            [py, "tools/preprocess_data.py", "--input", f"{d['openpecha']}.bo-zh.zh.xz", f"{d['openpecha']}.bo-en.en.xz",
             "--output-prefix", rel(p.replay_data), "--tokenizer", tok, "--append-eod", "--min-tibetan-ratio", "0",
             "--workers", "1", "--limit", str(size.replay_documents), "--no-progress"],
            outputs=[Path(f"{p.replay_data}_text_document.bin")], needs=["tokenizer"], threads=1))
    stages += [
        Stage("cpt", f"stage 1, continual pretraining on Tibetan: {size.cpt_iterations} steps of "
              f"{size.cpt_global_batch} x {size.cpt_seq_length} tokens"
              + (f", {size.replay:.0%} of the samples zh/en text (replay)" if size.replay else ""),
              [py, "-m", "megatron_tibetan.train", "--config", "configs/cpt/smollm2-135m.yaml",
               f"data.paths={cpt_paths}", *replay, f"data.tokenizer={tok}",
               f"data.cache_dir={rel(out / 'data' / 'cache')}", f"data.seq_length={size.cpt_seq_length}",
               "validation.paths=null", "validation.interval=null", "validation.at_start=false",
               f"checkpoint.load={rel(p.checkpoints('init'))}", f"checkpoint.dir={rel(p.checkpoints('cpt'))}",
               "checkpoint.save_interval=null", f"logging.dir={rel(out / 'cpt')}", "logging.progress=false",
               f"batch.global_batch_size={size.cpt_global_batch}", f"batch.micro_batch_size={size.cpt_micro_batch}",
               f"train.iterations={size.cpt_iterations}", f"schedule.warmup_iterations={max(1, size.cpt_iterations // 8)}",
               f"train.seed={seed}"] + both_stages,
              outputs=[p.checkpoints("cpt")], needs=["cpt_data", "import"] + (["replay_data"] if size.replay else []),
              threads=train_threads,
              clean=[p.checkpoints("cpt"), out / "cpt"]),
    ]
    for arm, start in (("sft", "init"), ("cpt_sft", "cpt")):
        what = "the imported base (single-stage ablation)" if arm == "sft" else "the CPT checkpoint"
        stages.append(Stage(
            arm, f"stage 2, SFT from {what}: {size.sft_iterations} steps of {size.sft_global_batch} packs x {size.sft_seq_length}",
            [py, "-m", "megatron_tibetan.train", "--config", "configs/sft/smollm2-135m.yaml",
             f"data.paths=[{rel(p.sft_data)}]", f"data.seq_length={size.sft_seq_length}",
             f"checkpoint.load={rel(p.checkpoints(start))}", f"checkpoint.dir={rel(p.checkpoints(arm))}",
             "checkpoint.save_interval=null", f"logging.dir={rel(out / arm)}", "logging.progress=false",
             f"batch.global_batch_size={size.sft_global_batch}", "batch.micro_batch_size=1", "train.epochs=null",
             f"train.iterations={size.sft_iterations}", "validation.interval=null", f"train.seed={seed}"] + both_stages,
            outputs=[p.checkpoints(arm)], needs=["sft_data", "import" if start == "init" else "cpt"], threads=train_threads,
            clean=[p.checkpoints(arm), out / arm]))
    for arm in ("init", *ARMS[1:]):
        stages.append(Stage(f"export_{arm}", f"export {arm} -> Hugging Face directory",
                            [py, "tools/convert_checkpoint.py", "export", "--megatron", rel(p.checkpoints(arm)),
                             "--output", rel(p.hf(arm))],
                            outputs=[p.hf(arm) / "config.json"], needs=["import" if arm == "init" else arm], threads=1,
                            clean=[p.hf(arm)]))
    n = size.flores_lines
    subset = {lang: p.flores(lang, n) for lang in ("bo", "zh", "en")}
    stages.append(Stage("flores_subset", f"the fixed FLORES-200 dev subset: its first {n} lines",
                        ["sh", "-c", " && ".join(f"head -n {n} {shlex.quote(d['flores_' + lang])} > {shlex.quote(rel(path))}"
                                                 for lang, path in subset.items())],
                        outputs=list(subset.values()), threads=1))
    arms = {"base": base, **{arm: rel(p.hf(arm)) for arm in ("cpt", "sft", "cpt_sft")}}
    models = [f"{name}={path}" for name, path in {"init": rel(p.hf("init")), **arms}.items()]
    evaluate = [py, "tools/evaluate.py", "--dtype", size.precision]
    # single-threaded evaluations, longest first, so that the two cores finish together (the runner starts ready
    # stages in list order): the phrasings, zh, en, then bits per byte
    k = min(size.phrasing_lines, n)
    stages.append(Stage("eval_phrasings", f"cpt_sft asked in each of the 21 trained phrasings, on the first {k} lines "
                        "per direction: chrF per phrasing and its spread",
                        evaluate + ["--model", f"cpt_sft={arms['cpt_sft']}", "--translate",
                                    ",".join(f"{lang}={rel(subset[lang])}" for lang in SOURCE_LANGS), "--ref", rel(subset["bo"]),
                                    "--limit", str(k), "--phrasings", "all", "--max-new-tokens", str(size.max_new_tokens),
                                    "--max-length-ratio", ",".join(f"{lang}={MAX_LENGTH_RATIO[lang]:g}" for lang in SOURCE_LANGS),
                                    "--batch-size", str(k), "--bootstrap", "100", "--output", rel(p.evaluation(n) / "phrasings")],
                        outputs=[p.evaluation(n) / "phrasings" / "metrics.json"], needs=["flores_subset", "export_cpt_sft"],
                        threads=1))
    # one evaluation per direction (single-threaded, so the two run side by side); cpt_sft first: the paired
    # bootstrap tests every other arm against it
    order = ["cpt_sft", "sft", "cpt", "base"]
    for lang in SOURCE_LANGS:
        stages.append(Stage(f"eval_{lang}", f"{lang}->bo translation of the {n} lines (greedy, at most "
                            f"{MAX_LENGTH_RATIO[lang]:g} characters per source character and {size.max_new_tokens} "
                            "tokens): syllable BLEU and chrF with bootstrap intervals, paired tests, source dependence",
                            evaluate + sum((["--model", f"{a}={arms[a]}"] for a in order), []) + [
                                "--translate", f"{lang}={rel(subset[lang])}", "--ref", rel(subset["bo"]),
                                "--max-new-tokens", str(size.max_new_tokens), "--max-length-ratio", f"{lang}={MAX_LENGTH_RATIO[lang]:g}",
                                "--batch-size", str(min(n, 50)),
                                "--output", rel(p.evaluation(n) / f"translation_{lang}")],
                            outputs=[p.evaluation(n) / f"translation_{lang}" / "metrics.json"],
                            needs=["flores_subset"] + [f"export_{a}" for a in ("cpt", "sft", "cpt_sft")], threads=1))
    stages.append(Stage("eval_bpb", f"bits per byte on the first {size.ppl_lines} lines of FLORES-200 dev bo, and of zh "
                        "and en (what the adaptation cost the base model's languages)",
                        evaluate + sum((["--model", m] for m in models), []) + [
                            "--ppl", d["flores_bo"], d["flores_zh"], d["flores_en"], "--limit", str(size.ppl_lines),
                            "--output", rel(p.bpb)],
                        outputs=[p.bpb / "metrics.json"], needs=[f"export_{a}" for a in ("init", "cpt", "sft", "cpt_sft")],
                        threads=1))
    stages += [
        Stage("layers_chain", "layer-wise analysis, chained: base -> cpt -> cpt_sft",
              [py, "tools/analyze_layers.py", "--base", base, "--adapted", f"cpt={arms['cpt']}", f"cpt_sft={arms['cpt_sft']}",
               "--chain", "--output", rel(out / "layers" / "chain")],
              outputs=[out / "layers" / "chain" / "analysis.json"], needs=["export_cpt", "export_cpt_sft"], threads=1),
        Stage("layers_sft", "layer-wise analysis: sft (no CPT) vs base",
              [py, "tools/analyze_layers.py", "--base", base, "--adapted", f"sft={arms['sft']}",
               "--output", rel(out / "layers" / "sft")],
              outputs=[out / "layers" / "sft" / "analysis.json"], needs=["export_sft"], threads=1),
    ]
    return stages
