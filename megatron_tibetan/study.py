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

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ARMS = ("base", "cpt", "sft", "cpt_sft")
DIRECTIONS = ("zh", "en")


def data_dir() -> Path:
    """The shared data: $MEGATRON_TIBETAN_DATA, else ../shared/data beside the repository."""
    return Path(os.environ.get("MEGATRON_TIBETAN_DATA") or ROOT.parent / "shared" / "data")


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
    max_new_tokens: int
    phrasing_lines: int  # the first lines of the subset that cpt_sft translates in every trained phrasing
    tiny_model: bool = False  # a random tiny Llama instead of SmolLM2-135M
    lr: float | None = None  # both stages' peak learning rate (None: the configs')


# About 14 minutes of stages on an idle 2-core machine (measured figures in README.md).
DEMO = Size("demo", tokenizer_lines=30000, new_tokens=4000, documents=3000, cpt_iterations=24, cpt_global_batch=4,
            cpt_micro_batch=2, cpt_seq_length=256, sft_iterations=24, sft_global_batch=2, sft_seq_length=512,
            flores_lines=40, ppl_lines=20, max_new_tokens=64, phrasing_lines=8)
TINY = Size("tiny", tokenizer_lines=2000, new_tokens=200, documents=300, cpt_iterations=3, cpt_global_batch=2,
            cpt_micro_batch=2, cpt_seq_length=64, sft_iterations=3, sft_global_batch=2, sft_seq_length=256,
            flores_lines=6, ppl_lines=3, max_new_tokens=8, phrasing_lines=2, tiny_model=True, lr=3e-3)


@dataclass
class Stage:
    key: str  # the record's name under OUT/stages/
    title: str
    command: list[str]  # the command a user types
    outputs: list[Path] = field(default_factory=list)  # must exist for the stage to count as done
    needs: list[str] = field(default_factory=list)  # stages whose outputs it reads
    threads: int | None = None  # cores it uses (OMP_NUM_THREADS); None: all
    clean: list[Path] = field(default_factory=list)  # removed before it runs (a training run would resume from them)


class StageFailed(RuntimeError):
    pass


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _show(cmd: list[str]) -> str:
    return shlex.join(cmd).replace(shlex.quote(sys.executable), "python")


def _rel(path: Path) -> str:
    """A path as the commands show it: relative to the repository when inside it or beside it (../shared)."""
    rel = os.path.relpath(path, ROOT)
    return str(path) if rel.startswith(os.pardir + os.sep + os.pardir) else rel


class _Running:
    """A started stage: its process, and a thread copying its output to the terminal and OUT/logs/<key>.log."""

    def __init__(self, index: int, stage: Stage, env: dict, logs: Path, prefix: bool):
        self.index, self.stage, self.threads = index, stage, int(env["OMP_NUM_THREADS"])
        self.load_before, self.start, self.started = os.getloadavg()[0], time.perf_counter(), time.time()
        self.log_path, self.usage_path = logs / f"{stage.key}.log", logs / f"{stage.key}.usage.json"
        self.usage_path.unlink(missing_ok=True)
        # through a small launcher: a child's peak RSS would otherwise include this process's memory at fork
        self.proc = subprocess.Popen([sys.executable, "-m", "megatron_tibetan.run_measured", str(self.usage_path),
                                      *stage.command], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.copier = threading.Thread(target=self._copy, args=(f"[{stage.key}] " if prefix else "",), daemon=True)
        self.copier.start()

    def _copy(self, prefix: str) -> None:
        # progress bars redraw with \r: only the last state of each line is kept
        with open(self.log_path, "w", encoding="utf-8", errors="replace") as log:
            for raw in self.proc.stdout:
                line = raw.decode("utf-8", errors="replace").rstrip("\n").rsplit("\r", 1)[-1]
                log.write(line + "\n")
                print(prefix + line, flush=True)

    def finish(self, status: int) -> dict:
        self.proc.returncode = code = os.waitstatus_to_exitcode(status)
        self.copier.join()
        if code != 0:
            raise StageFailed(f"stage '{self.stage.key}' failed with exit status {code} (log: {_rel(self.log_path)}): "
                              f"{_show(self.stage.command)}")
        # the peak of the command and of the descendants it waited for (workers, savers): see run_measured
        usage = json.loads(self.usage_path.read_text())
        return {"seconds": round(time.perf_counter() - self.start, 3), "cpu_seconds": usage["cpu_seconds"],
                "peak_rss_mib": usage["peak_rss_mib"], "threads": self.threads,
                "load_average": [round(self.load_before, 2), round(os.getloadavg()[0], 2)]}

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait()


def run_stages(stages: list[Stage], out: Path, force: bool = False, cores: int | None = None, log=print) -> list[dict]:
    """Run the stages, skipping those already done (see the module docstring); one record per stage, in order.

    Stages whose inputs are ready run side by side while the threads they ask for fit in ``cores`` (all cores
    by default): single-threaded stages pair up on two cores, training has the machine to itself. Ready
    stages start in the list's order (none overtakes an earlier one that waits for cores).
    """
    cores = cores or _cores()
    records_dir, logs = out / "stages", out / "logs"
    records_dir.mkdir(parents=True, exist_ok=True)
    logs.mkdir(parents=True, exist_ok=True)
    index = {s.key: i for i, s in enumerate(stages, 1)}
    unknown = {d for s in stages for d in s.needs} - set(index)
    if unknown:
        raise ValueError(f"stages need unknown stages: {sorted(unknown)}")
    finished: dict[str, float] = {}
    records: dict[str, dict] = {}
    pending = list(stages)
    running: dict[int, _Running] = {}
    n = len(stages)

    def skip_if_done(stage: Stage) -> bool:
        path = records_dir / f"{stage.key}.json"
        old = json.loads(path.read_text()) if path.is_file() else None
        done = (old is not None and not force and old["command"] == _show(stage.command)
                and all(p.exists() for p in stage.outputs) and all(finished[d] <= old["finished"] for d in stage.needs))
        if done:
            log(f"[study] {index[stage.key]}/{n} {stage.title}: done in an earlier run ({old['seconds']:.0f} s), skipped", flush=True)
            records[stage.key] = old | {"skipped": True}
            finished[stage.key] = old["finished"]
        else:
            path.unlink(missing_ok=True)
        return done

    try:
        while pending or running:
            used = sum(r.threads for r in running.values())
            for stage in list(pending):
                if any(d not in finished for d in stage.needs):
                    continue
                if skip_if_done(stage):
                    pending.remove(stage)
                    continue
                threads = min(stage.threads or cores, cores)
                if running and used + threads > cores:
                    break
                env = dict(os.environ, PYTHONUNBUFFERED="1")
                env.setdefault("OMP_NUM_THREADS", str(threads))  # a user's setting wins
                log(f"\n[study] {index[stage.key]}/{n} {stage.title}\n$ {_show(stage.command)}", flush=True)
                for path in stage.clean:
                    shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
                r = _Running(index[stage.key], stage, env, logs, prefix=cores > 1)
                running[r.proc.pid] = r
                used += r.threads
                pending.remove(stage)
            if not running:
                if pending:  # nothing runs and nothing can start: a stage needs one that comes after it
                    raise ValueError(f"stages cannot start: {[s.key for s in pending]}")
                break
            pid, status = os.waitpid(-1, 0)  # whichever stage ends first
            if pid not in running:
                continue
            r = running.pop(pid)
            result = r.finish(status)
            record = {"key": r.stage.key, "title": r.stage.title, "command": _show(r.stage.command), **result,
                      "started": r.started, "finished": time.time()}
            (records_dir / f"{r.stage.key}.json").write_text(json.dumps(record, indent=2) + "\n")
            finished[r.stage.key] = record["finished"]
            records[r.stage.key] = record | {"skipped": False}
            log(f"[study] {r.index}/{n} {r.stage.title}: {result['seconds']:.0f} s wall, {result['cpu_seconds']:.0f} s CPU, "
                f"peak {result['peak_rss_mib']:,} MiB, load average {result['load_average'][1]:.1f}", flush=True)
    except BaseException:
        for r in running.values():
            r.stop()
        raise
    return [records[s.key] for s in stages]


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


def make_tiny_model(out: Path, seed: int = 1234) -> None:
    """A random tiny Llama with SmolLM2's tokenizer, saved as an HF directory (the tiny study's base model)."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    from megatron_tibetan.tokenizer.base import load_tokenizer

    tok = load_tokenizer("smollm2")
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                         tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp)
    tok.save_pretrained(tmp)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)  # never a half-written model under the final name


def build_stages(size: Size, out: Path, seed: int = 1234) -> list[Stage]:
    """The study's stages for ``size``, writing under ``out``."""
    py = sys.executable
    p = Paths(out)
    data = data_dir()
    d = {k: _rel(v) for k, v in {
        "nanhai": data / "mono" / "nanhai.bo.txt.xz", "flores_bo": data / "eval" / "flores200.dev.bo",
        "flores_zh": data / "eval" / "flores200.dev.zh", "flores_en": data / "eval" / "flores200.dev.en",
        "ntrex": data / "parallel" / "ntrex128"}.items()}
    tok = _rel(p.tokenizer)
    base = _rel(p.base_model) if size.tiny_model else "smollm2"
    stages: list[Stage] = []
    lr = [f"optimizer.lr={size.lr}", f"optimizer.min_lr={size.lr / 10}"] if size.lr else []
    train_threads = 1 if size.tiny_model else None  # a tiny model gains nothing from threads: two stages share the cores
    if size.tiny_model:
        stages.append(Stage("tiny_model", "random tiny Llama with SmolLM2's tokenizer (the tiny study's base model)",
                            [py, "-m", "megatron_tibetan.study", "--write-tiny-model", _rel(p.base_model), "--seed", str(seed)],
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
                             d["flores_zh"], d["flores_en"], "--output", _rel(p.fertility(which))],
                            outputs=[p.fertility(which)], needs=["tokenizer"] if which == "extended" else [], threads=1))
    ntrex = d["ntrex"]
    stages += [
        Stage("cpt_data", f"CPT data: the first {size.documents:,} Nanhai documents -> Megatron indexed dataset",
              [py, "tools/preprocess_data.py", "--input", d["nanhai"], "--output-prefix", _rel(p.cpt_data),
               "--tokenizer", tok, "--append-eod", "--workers", "1", "--limit", str(size.documents), "--no-progress"],
              outputs=[Path(f"{p.cpt_data}_text_document.bin")], needs=["tokenizer"], threads=1),
        Stage("sft_data", "SFT data: NTREX-128 zh->bo and en->bo pairs, chat template, loss on the answers "
              "(FLORES dev excluded)",
              [py, "tools/prepare_sft.py", "--pairs", f"zh={ntrex}.zh.xz,{ntrex}.bo.xz", "--pairs", f"en={ntrex}.en.xz,{ntrex}.bo.xz",
               "--tokenizer", tok, "--output", _rel(p.sft_data), "--valid-fraction", "0", "--exclude", d["flores_bo"],
               "--max-length", str(size.sft_seq_length), "--seed", str(seed), "--no-progress"],
              outputs=[Path(f"{p.sft_data}_stats.json")], needs=["tokenizer"], threads=1),
        Stage("import", "base model -> Megatron checkpoint, vocabulary extended (sub-token-mean rows)",
              [py, "tools/convert_checkpoint.py", "import", "--hf", base, "--tokenizer", tok,
               "--output", _rel(p.checkpoints("init"))],
              outputs=[p.checkpoints("init") / "model.json"], needs=["tokenizer"] + (["tiny_model"] if size.tiny_model else []),
              threads=1, clean=[p.checkpoints("init")]),
        Stage("cpt", f"stage 1, continual pretraining on Tibetan: {size.cpt_iterations} steps of "
              f"{size.cpt_global_batch} x {size.cpt_seq_length} tokens",
              [py, "-m", "megatron_tibetan.train", "--config", "configs/cpt/smollm2-135m.yaml",
               f"data.paths=[{_rel(p.cpt_data)}_text_document]", f"data.tokenizer={tok}",
               f"data.cache_dir={_rel(out / 'data' / 'cache')}", f"data.seq_length={size.cpt_seq_length}",
               "validation.paths=null", "validation.interval=null", "validation.at_start=false",
               f"checkpoint.load={_rel(p.checkpoints('init'))}", f"checkpoint.dir={_rel(p.checkpoints('cpt'))}",
               "checkpoint.save_interval=null", f"logging.dir={_rel(out / 'cpt')}", "logging.progress=false",
               f"batch.global_batch_size={size.cpt_global_batch}", f"batch.micro_batch_size={size.cpt_micro_batch}",
               f"train.iterations={size.cpt_iterations}", f"schedule.warmup_iterations={max(1, size.cpt_iterations // 8)}",
               f"train.seed={seed}"] + lr,
              outputs=[p.checkpoints("cpt")], needs=["cpt_data", "import"], threads=train_threads,
              clean=[p.checkpoints("cpt"), out / "cpt"]),
    ]
    for arm, start in (("sft", "init"), ("cpt_sft", "cpt")):
        what = "the imported base (single-stage ablation)" if arm == "sft" else "the CPT checkpoint"
        stages.append(Stage(
            arm, f"stage 2, SFT from {what}: {size.sft_iterations} steps of {size.sft_global_batch} packs x {size.sft_seq_length}",
            [py, "-m", "megatron_tibetan.train", "--config", "configs/sft/smollm2-135m.yaml",
             f"data.paths=[{_rel(p.sft_data)}]", f"data.seq_length={size.sft_seq_length}",
             f"checkpoint.load={_rel(p.checkpoints(start))}", f"checkpoint.dir={_rel(p.checkpoints(arm))}",
             "checkpoint.save_interval=null", f"logging.dir={_rel(out / arm)}", "logging.progress=false",
             f"batch.global_batch_size={size.sft_global_batch}", "batch.micro_batch_size=1", "train.epochs=null",
             f"train.iterations={size.sft_iterations}", "validation.interval=null", f"train.seed={seed}"] + lr,
            outputs=[p.checkpoints(arm)], needs=["sft_data", "import" if start == "init" else "cpt"], threads=train_threads,
            clean=[p.checkpoints(arm), out / arm]))
    for arm in ("init", "cpt", "sft", "cpt_sft"):
        stages.append(Stage(f"export_{arm}", f"export {arm} -> Hugging Face directory",
                            [py, "tools/convert_checkpoint.py", "export", "--megatron", _rel(p.checkpoints(arm)),
                             "--output", _rel(p.hf(arm))],
                            outputs=[p.hf(arm) / "config.json"], needs=["import" if arm == "init" else arm], threads=1,
                            clean=[p.hf(arm)]))
    n = size.flores_lines
    subset = {lang: p.flores(lang, n) for lang in ("bo", "zh", "en")}
    stages.append(Stage("flores_subset", f"the fixed FLORES-200 dev subset: its first {n} lines",
                        ["sh", "-c", " && ".join(f"head -n {n} {shlex.quote(d['flores_' + lang])} > {shlex.quote(_rel(path))}"
                                                 for lang, path in subset.items())],
                        outputs=list(subset.values()), threads=1))
    arms = {"base": base, **{arm: _rel(p.hf(arm)) for arm in ("cpt", "sft", "cpt_sft")}}
    models = [f"{name}={path}" for name, path in {"init": _rel(p.hf("init")), **arms}.items()]
    evaluate = [py, "tools/evaluate.py"]
    stages.append(Stage("eval_bpb", f"bits per byte on the first {size.ppl_lines} lines of FLORES-200 dev bo",
                        evaluate + sum((["--model", m] for m in models), []) + [
                            "--ppl", d["flores_bo"], "--limit", str(size.ppl_lines), "--output", _rel(p.bpb)],
                        outputs=[p.bpb / "metrics.json"], needs=[f"export_{a}" for a in ("init", "cpt", "sft", "cpt_sft")],
                        threads=1))
    # one evaluation per direction (single-threaded, so the two run side by side); cpt_sft first: the paired
    # bootstrap tests every other arm against it
    order = ["cpt_sft", "sft", "cpt", "base"]
    for lang in DIRECTIONS:
        stages.append(Stage(f"eval_{lang}", f"{lang}->bo translation of the {n} lines (greedy, at most {size.max_new_tokens} "
                            "new tokens): syllable BLEU and chrF with bootstrap intervals, paired tests",
                            evaluate + sum((["--model", f"{a}={arms[a]}"] for a in order), []) + [
                                "--translate", f"{lang}={_rel(subset[lang])}", "--ref", _rel(subset["bo"]),
                                "--max-new-tokens", str(size.max_new_tokens), "--batch-size", str(min(n, 50)),
                                "--output", _rel(p.evaluation(n) / f"translation_{lang}")],
                            outputs=[p.evaluation(n) / f"translation_{lang}" / "metrics.json"],
                            needs=["flores_subset"] + [f"export_{a}" for a in ("cpt", "sft", "cpt_sft")], threads=1))
    k = min(size.phrasing_lines, n)
    stages.append(Stage("eval_phrasings", f"cpt_sft asked in each of the 21 trained phrasings, on the first {k} lines "
                        "per direction: chrF per phrasing and its spread",
                        evaluate + ["--model", f"cpt_sft={arms['cpt_sft']}", "--translate",
                                    ",".join(f"{lang}={_rel(subset[lang])}" for lang in DIRECTIONS), "--ref", _rel(subset["bo"]),
                                    "--limit", str(k), "--phrasings", "all", "--max-new-tokens", str(size.max_new_tokens),
                                    "--batch-size", str(k), "--bootstrap", "100", "--output", _rel(p.evaluation(n) / "phrasings")],
                        outputs=[p.evaluation(n) / "phrasings" / "metrics.json"], needs=["flores_subset", "export_cpt_sft"],
                        threads=1))
    stages += [
        Stage("layers_chain", "layer-wise analysis, chained: base -> cpt -> cpt_sft",
              [py, "tools/analyze_layers.py", "--base", base, "--adapted", f"cpt={arms['cpt']}", f"cpt_sft={arms['cpt_sft']}",
               "--chain", "--output", _rel(out / "layers" / "chain")],
              outputs=[out / "layers" / "chain" / "analysis.json"], needs=["export_cpt", "export_cpt_sft"], threads=1),
        Stage("layers_sft", "layer-wise analysis: sft (no CPT) vs base",
              [py, "tools/analyze_layers.py", "--base", base, "--adapted", f"sft={arms['sft']}",
               "--output", _rel(out / "layers" / "sft")],
              outputs=[out / "layers" / "sft" / "analysis.json"], needs=["export_sft"], threads=1),
    ]
    return stages


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m megatron_tibetan.study", description=__doc__.split("\n\n")[0],
                                     epilog="Every output lands under --output; see README.md, 'make demo'.")
    parser.add_argument("--output", default=None, help="output folder (default runs/demo, runs/demo-tiny with --tiny)")
    parser.add_argument("--tiny", action="store_true", help="a random tiny model and a few steps per stage (tests, CI)")
    parser.add_argument("--force", action="store_true", help="run every stage again, even those already done")
    parser.add_argument("--flores-lines", type=int, help="FLORES-200 dev lines translated per direction "
                        f"(default {DEMO.flores_lines}; {TINY.flores_lines} with --tiny)")
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--write-tiny-model", metavar="DIR", help="only write the tiny study's random base model to DIR")
    args = parser.parse_args(argv)
    if args.write_tiny_model:
        make_tiny_model(Path(args.write_tiny_model), args.seed)
        print(f"[study] wrote a random tiny Llama to {args.write_tiny_model}")
        return 0
    size = TINY if args.tiny else DEMO
    if args.flores_lines is not None:
        if args.flores_lines < 2:
            parser.error("--flores-lines: at least 2 lines (bootstrap intervals need several)")
        size = replace(size, flores_lines=args.flores_lines)
    out = Path(args.output or ("runs/demo-tiny" if args.tiny else "runs/demo"))
    out = out if out.is_absolute() else ROOT / out
    if not (data_dir() / "README.md").is_file():
        print(f"error: the shared data is not at {data_dir()}: put ../shared/data beside the repository "
              "or set MEGATRON_TIBETAN_DATA", file=sys.stderr)
        return 2
    start = time.perf_counter()
    stages = build_stages(size, out, args.seed)
    print(f"[study] {size.name}: {len(stages)} stages, output {_rel(out)}; "
          f"{'--force: every stage runs' if args.force else 'stages done in an earlier run are skipped'}", flush=True)
    try:
        records = run_stages(stages, out, force=args.force)
    except StageFailed as e:
        print(f"\n[study] error: {e}\n[study] its output is above; run the same command again to continue from this stage",
              file=sys.stderr)
        return 1
    from megatron_tibetan.evaluation.study_report import write_report

    report_start = time.perf_counter()
    paths = Paths(out)
    # another subset size (--flores-lines) reuses the trained models and reports beside its evaluation
    report_dir = out if size.flores_lines == (TINY if args.tiny else DEMO).flores_lines else paths.evaluation(size.flores_lines)
    summary = write_report(
        report_dir, size=size.__dict__, records=records, seconds_this_run=time.perf_counter() - start,
        fertility={w: paths.fertility(w) for w in ("base", "extended")},
        bpb=paths.bpb / "metrics.json",
        translation={f"{lang}-bo": paths.evaluation(size.flores_lines) / f"translation_{lang}" / "metrics.json"
                     for lang in DIRECTIONS},
        phrasings=paths.evaluation(size.flores_lines) / "phrasings" / "metrics.json",
        references={f"{lang}-bo": paths.flores("bo", size.flores_lines) for lang in DIRECTIONS},
        training_logs={arm: out / arm / "metrics.jsonl" for arm in ("cpt", "sft", "cpt_sft")},
        layers={"chain": out / "layers" / "chain", "sft": out / "layers" / "sft"},
        sft_stats=Path(f"{paths.sft_data}_stats.json"), cpt_stats=Path(f"{paths.cpt_data}_stats.json"),
        tokenizers={"base": paths.base_model if size.tiny_model else "smollm2", "extended": paths.tokenizer},
        show=_rel,
    )
    print(f"[study] report ({time.perf_counter() - report_start:.0f} s): {_rel(report_dir / 'report.md')}, "
          f"{_rel(report_dir / 'report.json')}")
    for line in summary:
        print("  " + line)
    print(f"[study] finished in {(time.perf_counter() - start) / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
