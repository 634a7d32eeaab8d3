#!/usr/bin/env python
"""Layer-wise analysis on real checkpoints: SmolLM2-135M base -> a few CPT steps -> a few SFT steps.

The adapted copies are made with plain torch AdamW (not the Megatron loop), so this runs on a laptop CPU in
minutes: CPT on normalised monolingual Tibetan packed into EOS-separated sequences, then SFT on chat-formatted
en->bo pairs (loss on the answer only). Then tools/analyze_layers.py's library compares base -> CPT -> SFT
(chained) and writes OUT/analysis/{analysis.json, report.md, *.png}; OUT/adapt.json has losses and timings.

    python benchmarks/layer_analysis_smollm2.py --output out/layers --steps 20
"""

from __future__ import annotations

import argparse
import json
import lzma
import time
from pathlib import Path

import torch


from megatron_tibetan import presets
from megatron_tibetan.evaluation.layers import analyze
from megatron_tibetan.evaluation.report import layers_report
from megatron_tibetan.data.prompts import translation_messages
from megatron_tibetan.text import normalize

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def cpt_batches(tok, path: Path, steps: int, batch: int, seq: int):
    """Normalised lines, tokenised, joined with EOS and cut into [batch, seq] blocks (labels = inputs)."""
    need, ids = steps * batch * seq, []
    with lzma.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            text = normalize(line)
            if text:
                ids += tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
            if len(ids) >= need:
                break
    blocks = torch.tensor(ids[:need]).view(steps, batch, seq)
    return [{"input_ids": b, "attention_mask": torch.ones_like(b), "labels": b.clone()} for b in blocks]


def sft_batches(tok, src: Path, tgt: Path, steps: int, batch: int, seq: int):
    """Chat-formatted en->bo pairs; prompt tokens get label -100 so only the Tibetan answer is learnt."""
    with lzma.open(src, "rt", encoding="utf-8") as fs, lzma.open(tgt, "rt", encoding="utf-8") as ft:
        pairs = [(normalize(s), normalize(t)) for s, t, _ in zip(fs, ft, range(steps * batch))]
    out = []
    for i in range(0, len(pairs), batch):
        ids = torch.full((batch, seq), tok.pad_token_id)
        labels = torch.full((batch, seq), -100)
        mask = torch.zeros((batch, seq), dtype=torch.long)
        for r, (s, t) in enumerate(pairs[i : i + batch]):
            messages = translation_messages(s, "en", "bo", 0, answer=t)
            head = tok.apply_chat_template(messages[:1], add_generation_prompt=True, tokenize=False)
            full = tok.apply_chat_template(messages, tokenize=False)
            p, f = tok(head, add_special_tokens=False)["input_ids"], tok(full, add_special_tokens=False)["input_ids"][:seq]
            ids[r, : len(f)] = torch.tensor(f)
            mask[r, : len(f)] = 1
            labels[r, len(p) : len(f)] = torch.tensor(f[len(p) :])
        out.append({"input_ids": ids, "attention_mask": mask, "labels": labels})
    return out


def train(model, batches, lr: float, label: str) -> list[float]:
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    model.train()
    losses = []
    for step, batch in enumerate(batches, 1):
        loss = model(**batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
        print(f"[{label}] step {step}/{len(batches)} loss {loss.item():.4f}", flush=True)
    model.eval()
    return losses


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", default="out/layers")
    p.add_argument("--steps", type=int, default=20, help="CPT steps")
    p.add_argument("--sft-steps", type=int, help="SFT steps after CPT (default: --steps; 0: no SFT stage)")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--lr", type=float, default=1e-4)
    a = p.parse_args()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    out = Path(a.output)
    base = presets.smollm2_hf_dir()
    tok = AutoTokenizer.from_pretrained(str(base))
    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    sft_steps = a.steps if a.sft_steps is None else a.sft_steps
    record_path = out / "adapt.json"
    record = json.loads(record_path.read_text()) if record_path.is_file() else {}
    record.update(base=str(base), batch=a.batch, seq=a.seq, lr=a.lr)
    stages = [
        ("cpt", a.steps, lambda: cpt_batches(tok, DATA / "mono" / "nanhai.bo.txt.xz", a.steps, a.batch, a.seq)),
        ("sft", sft_steps, lambda: sft_batches(tok, DATA / "parallel" / "ntrex128.en.xz", DATA / "parallel" / "ntrex128.bo.xz", sft_steps, a.batch, a.seq)),
    ]
    done = []
    for name, steps, make in stages:
        if steps == 0:
            break
        done.append(name)
        if (out / name / "model.safetensors").is_file() and record.get(name, {}).get("steps") == steps:
            print(f"[{name}] reusing {out / name} ({steps} steps, trained before)")
            model = AutoModelForCausalLM.from_pretrained(str(out / name), dtype=torch.float32)
            continue
        start = time.perf_counter()
        losses = train(model, make(), a.lr, name)
        model.save_pretrained(out / name)
        tok.save_pretrained(out / name)
        record[name] = {"steps": steps, "losses": losses, "seconds": time.perf_counter() - start}
        record_path.parent.mkdir(parents=True, exist_ok=True)
        record_path.write_text(json.dumps(record, indent=2) + "\n")
    start = time.perf_counter()
    result = analyze(base, [out / n for n in done], names=done, chain=True)
    report = layers_report(result, out / "analysis")
    record["analysis_seconds"] = time.perf_counter() - start
    record_path.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {report} and {record_path}")


if __name__ == "__main__":
    main()
