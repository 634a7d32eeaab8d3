"""SFT through the training loop, driven by tests/test_sft_train.py (results as JSON), in one process.

    python tests/train_sft.py WORKDIR

1. exactness: the loss the Trainer computes on a packed micro-batch (megatron-core, THD attention) against
   the token-weighted mean of per-example losses of an independent ``transformers`` forward of the same
   weights, for SmolLM2's and Qwen2.5's chat templates (tiny random models with those vocabularies);
2. resume: an SFT run stopped by SIGTERM in the middle of its second epoch and resumed equals the
   uninterrupted run;
3. memorisation: a tiny CPT run, then SFT from it on 32 Tatoeba en->bo pairs (prompted with the
   evaluation's first phrasing), for tests/test_sft_train.py to export and translate back through
   tools/convert_checkpoint.py and tools/evaluate.py.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = ROOT.parent / "shared" / "data"
TATOEBA = (DATA / "eval" / "tatoeba.bo-en.en", DATA / "eval" / "tatoeba.bo-en.bo")
NTREX = {lang: DATA / "parallel" / f"ntrex128.{lang}.xz" for lang in ("zh", "en", "bo")}
TINY_HF = yaml.safe_load((ROOT / "configs" / "cpt" / "tiny-cpu.yaml").read_text())["model"]["hf_config"]


def prepare(prefix: Path, tokenizer: str, **kwargs) -> str:
    from megatron_tibetan.data.sft import SFTDataConfig, prepare_sft

    prepare_sft(SFTDataConfig(output_prefix=str(prefix), tokenizer=tokenizer, progress=False, **kwargs))
    return str(prefix)


def ntrex_slice(work: Path, lines: int) -> tuple:
    """zh->bo and en->bo pairs from the first ``lines`` lines of NTREX."""
    from megatron_tibetan.text.readers import read_lines

    for lang in ("zh", "en", "bo"):
        (work / f"ntrex.{lang}").write_text("\n".join(read_lines(NTREX[lang], lines)) + "\n", encoding="utf-8")
    return tuple((lang, str(work / f"ntrex.{lang}"), str(work / "ntrex.bo")) for lang in ("zh", "en"))


def sft_config(work: Path, name: str, prefix: str, *extra: str):
    from megatron_tibetan.config import load_config

    return load_config(ROOT / "configs" / "sft" / "tiny-cpu.yaml", [
        f"data.paths=[{prefix}]", "data.seq_length=256", f"checkpoint.dir={work / name / 'ckpt'}",
        f"logging.dir={work / name}", "logging.progress=false", "validation.interval=null", *extra])


def records(result) -> list:
    return [{k: r[k] for k in ("step", "loss", "lr", "grad_norm", "consumed_samples")} for r in result["records"]]


def exactness(work: Path, family: str, tokenizer: str) -> dict:
    """Our packed loss and the per-example transformers reference, on the first pack of the run."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from megatron_tibetan.convert import import_hf
    from megatron_tibetan.tokenizer.base import load_tokenizer
    from megatron_tibetan.training.loop import Trainer

    tok = load_tokenizer(tokenizer)
    config = AutoConfig.for_model(family, vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                                  num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                  max_position_embeddings=1024, tie_word_embeddings=True)
    torch.manual_seed(0)
    hf = AutoModelForCausalLM.from_config(config)
    hf_dir, mg_dir = work / f"hf_{family}", work / f"mg_{family}"
    hf.save_pretrained(hf_dir)
    tok.save_pretrained(hf_dir)
    import_hf(hf_dir, mg_dir)
    prefix = prepare(work / f"sft_{family}", tokenizer, pairs=ntrex_slice(work, 80), max_length=1024, seq_length=1024)
    trainer = Trainer(sft_config(work, f"exact_{family}", prefix, f"checkpoint.load={mg_dir}", "checkpoint.dir=null",
                                 "data.tokenizer=null", "data.seq_length=1024", "train.epochs=null", "train.iterations=1",
                                 "batch.global_batch_size=1"))
    samples = trainer.train_data
    order = samples.dataset.order(0, samples.seed)
    k = next(k for k, pack in enumerate(order) if len(samples.dataset.packs[pack]) >= 3)  # a pack of several
    pack = int(order[k])
    batch = {key: v[None] for key, v in samples[k].items()}
    loss, count = trainer._reduce_loss(trainer._run_schedule(iter([batch]), 1, forward_only=True))
    trainer.close()

    hf.eval()
    total, trained = 0.0, 0
    members = samples.dataset.packs[pack]
    with torch.no_grad():
        for i in members:  # one example at a time: no packing, no mask, no padding
            ids, mask = samples.dataset.example(i)
            ids = torch.from_numpy(ids)
            logits = hf(ids[None, :-1]).logits[0].double()
            nll = torch.nn.functional.cross_entropy(logits, ids[1:], reduction="none")
            keep = torch.from_numpy(mask[1:])
            total += float(nll[keep].sum())
            trained += int(keep.sum())
    return {"loss": loss, "count": count, "reference": total / trained, "reference_count": trained,
            "examples_in_pack": len(members)}


def resume(work: Path) -> dict:
    from megatron_tibetan.training import loop

    prefix = prepare(work / "sft_tatoeba", "smollm2", pairs=(("en", str(TATOEBA[0]), str(TATOEBA[1])),),
                     max_length=256, seq_length=256)
    scratch = ["checkpoint.load=null", "checkpoint.finetune=false",
               "model.hf_config=" + yaml.safe_dump(TINY_HF, default_flow_style=True).strip(),
               "train.epochs=2", "batch.global_batch_size=4", "checkpoint.save_interval=null"]
    out = {"full": records(loop.run(sft_config(work, "full", prefix, *scratch)))}

    class Signalled(loop.Trainer):
        def train_step(self, iterators):
            result = super().train_step(iterators)
            if self.iteration + 1 == 6:  # in the second epoch (19 packs, 4 per step)
                os.kill(os.getpid(), signal.SIGTERM)
            return result

    trainer = Signalled(sft_config(work, "stopped", prefix, *scratch))
    first = trainer.train()
    trainer.close()
    out["first"] = {"stopped_by_signal": first["stopped_by_signal"], "iteration": first["iteration"]}
    out["resumed"] = records(loop.run(sft_config(work, "stopped", prefix, *scratch)))
    return out


def memorise(work: Path) -> dict:
    """The user's chain on a small scale: SmolLM2's tokenizer extended with 1,000 Tibetan tokens
    (tools/extend_tokenizer.py on Nanhai), a short tiny CPT run on Nanhai, then SFT from that checkpoint on
    32 Tatoeba en->bo pairs written as chat JSONL with the evaluation's own prompt
    (``translation_messages``), learnt by heart; tests/test_sft_train.py exports and translates them back.
    With the extension the answers are a few tokens per syllable instead of nine, which a few epochs learn."""
    from megatron_tibetan.data.preprocess import PreprocessConfig, preprocess
    from megatron_tibetan.data.prompts import translation_messages
    from megatron_tibetan.text.filters import FilterConfig
    from megatron_tibetan.text.readers import read_lines
    from megatron_tibetan.tokenizer.base import load_tokenizer
    from megatron_tibetan.tokenizer.extend import extend_tokenizer
    from megatron_tibetan.training import loop

    tokenizer = work / "smollm2-bo1k"
    nanhai = DATA / "mono" / "nanhai.bo.txt.xz"
    extend_tokenizer("smollm2", [nanhai, TATOEBA[1]], 1000, tokenizer, max_lines_per_file=[2000, None])
    hf = dict(TINY_HF, vocab_size=len(load_tokenizer(str(tokenizer))))
    hf_config = "model.hf_config=" + yaml.safe_dump(hf, default_flow_style=True).strip()

    cpt_data = preprocess(PreprocessConfig(inputs=(str(nanhai),), output_prefix=str(work / "nanhai_bo1k"),
                                           tokenizer=str(tokenizer), append_eod=True, limit=2000, progress=False,
                                           filters=FilterConfig(dedup=False)))["datasets"]["text"]
    from megatron_tibetan.config import load_config

    cpt = loop.run(load_config(ROOT / "configs" / "cpt" / "tiny-cpu.yaml", [
        f"data.paths=[{cpt_data}]", f"data.tokenizer={tokenizer}", f"data.cache_dir={work / 'cache'}", hf_config,
        "train.iterations=12", "schedule.warmup_iterations=2", "optimizer.lr=3e-4", "optimizer.min_lr=3e-5",
        f"checkpoint.dir={work / 'cpt' / 'ckpt'}", "checkpoint.save_interval=null",
        f"logging.dir={work / 'cpt'}", "logging.progress=false", "validation.interval=null"]))

    en, bo = (read_lines(p)[:32] for p in TATOEBA)
    chats = work / "tatoeba32.jsonl"
    with open(chats, "w", encoding="utf-8") as f:
        for src, tgt in zip(en, bo):
            f.write(json.dumps({"messages": translation_messages(src, "en", "bo", 0, answer=tgt)}, ensure_ascii=False) + "\n")
    (work / "tatoeba32.en").write_text("\n".join(en) + "\n", encoding="utf-8")
    (work / "tatoeba32.bo").write_text("\n".join(bo) + "\n", encoding="utf-8")
    prefix = prepare(work / "sft_memorise", str(tokenizer), messages=(str(chats),), max_length=256, seq_length=256)
    result = loop.run(sft_config(work, "memorise", prefix, f"checkpoint.load={work / 'cpt' / 'ckpt'}",
                                 "checkpoint.finetune=true", hf_config,
                                 f"data.tokenizer={tokenizer}", "train.epochs=50", "batch.global_batch_size=2",
                                 "optimizer.lr=3e-3", "optimizer.min_lr=3e-4", "schedule.warmup_fraction=0.05",
                                 "checkpoint.save_interval=null", "checkpoint.keep_last=1", "logging.interval=10"))
    return {"checkpoint": str(work / "memorise" / "ckpt"), "losses": [r["loss"] for r in result["records"]],
            "cpt_losses": [r["loss"] for r in cpt["records"]],
            "sources": str(work / "tatoeba32.en"), "references": str(work / "tatoeba32.bo")}


if __name__ == "__main__":  # the guard matters: dist_checkpointing's save spawns a process that re-imports this
    work = Path(sys.argv[1])
    parts = sys.argv[2:] or ["exact", "resume", "memorise"]
    out = {}
    if "exact" in parts:
        out["exact"] = {family: exactness(work, family, tok) for family, tok in (("llama", "smollm2"), ("qwen2", "qwen2.5"))}
    if "resume" in parts:
        out["resume"] = resume(work)
    if "memorise" in parts:
        out["memorise"] = memorise(work)
    (work / "sft.json").write_text(json.dumps(out, indent=1))
