"""`make demo`'s study: the stage runner (skip-if-done, dependencies, --force, failures, per-stage resources,
stages side by side) on trivial commands, and the whole study end to end at tiny size (`tools/demo.py --tiny`:
a random tiny Llama, a few steps per stage) on the real shared data: report.json's structure, the hypothesis
files re-scored by plain sacrebleu, and a rerun that skips every stage."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import sacrebleu

from megatron_tibetan.study.recipe import MAX_LENGTH_RATIO, TINY
from megatron_tibetan.study.runner import Stage, StageFailed, run_stages
from megatron_tibetan.text import normalize, segment_for_bleu, tibetan_only

ROOT = Path(__file__).resolve().parents[1]


# --- the stage runner, on commands that take a fraction of a second ---------------------------------------------

def _py(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def _write(path: Path, text: str) -> list[str]:
    return _py(f"import pathlib; pathlib.Path({str(path)!r}).write_text({text!r})")


def _chain(tmp: Path, text_b: str = "b") -> list[Stage]:
    """a -> b -> c, and d on its own."""
    return [
        Stage("a", "first", _write(tmp / "a.txt", "a"), outputs=[tmp / "a.txt"], threads=1),
        Stage("b", "after a", _write(tmp / "b.txt", text_b), outputs=[tmp / "b.txt"], needs=["a"], threads=1,
              clean=[tmp / "b.state"]),  # as a training stage's checkpoint folder, which a rerun would resume from
        Stage("c", "after b", _write(tmp / "c.txt", "c"), outputs=[tmp / "c.txt"], needs=["b"], threads=1),
        Stage("d", "independent", _write(tmp / "d.txt", "d"), outputs=[tmp / "d.txt"], threads=1),
    ]


def _ran(records: list[dict]) -> list[str]:
    return [r["key"] for r in records if not r["skipped"]]


def test_runner_skips_what_is_done_and_reruns_what_changed(tmp_path):
    quiet = lambda *a, **k: None  # noqa: E731
    records = run_stages(_chain(tmp_path), tmp_path / "out", log=quiet)
    assert _ran(records) == ["a", "b", "c", "d"]
    assert [r["key"] for r in records] == ["a", "b", "c", "d"]  # in the list's order, whatever ended first
    for r in records:
        assert r["seconds"] > 0 and r["cpu_seconds"] >= 0 and r["peak_rss_mib"] > 0 and r["command"].startswith("python -c")
        assert (tmp_path / "out" / "stages" / f"{r['key']}.json").is_file()
    assert _ran(run_stages(_chain(tmp_path), tmp_path / "out", log=quiet)) == []
    # a changed command reruns its stage (from a clean state) and what depends on it, not the independent one
    (tmp_path / "b.state").mkdir()
    (tmp_path / "b.state" / "latest").write_text("1")
    assert _ran(run_stages(_chain(tmp_path, text_b="b2"), tmp_path / "out", log=quiet)) == ["b", "c"]
    assert (tmp_path / "b.txt").read_text() == "b2" and not (tmp_path / "b.state").exists()
    # a missing output reruns that stage (and its dependants)
    (tmp_path / "a.txt").unlink()
    assert _ran(run_stages(_chain(tmp_path, text_b="b2"), tmp_path / "out", log=quiet)) == ["a", "b", "c"]
    assert _ran(run_stages(_chain(tmp_path, text_b="b2"), tmp_path / "out", force=True, log=quiet)) == ["a", "b", "c", "d"]


def test_runner_failure_names_the_stage_and_a_rerun_continues_there(tmp_path):
    quiet = lambda *a, **k: None  # noqa: E731
    stages = _chain(tmp_path)
    stages[1] = Stage("b", "after a", _py("import sys; print('bad input'); sys.exit(3)"), needs=["a"], threads=1)
    with pytest.raises(StageFailed, match=r"stage 'b' failed with exit status 3"):
        run_stages(stages, tmp_path / "out", cores=1, log=quiet)
    assert not (tmp_path / "c.txt").exists()  # nothing after the failure ran
    assert "bad input" in (tmp_path / "out" / "logs" / "b.log").read_text()
    assert _ran(run_stages(_chain(tmp_path), tmp_path / "out", cores=1, log=quiet)) == ["b", "c", "d"]
    with pytest.raises(ValueError, match="unknown stages"):
        run_stages([Stage("x", "x", _py("pass"), needs=["nope"])], tmp_path / "out2", log=quiet)


def test_runner_measures_each_stage_and_runs_single_threaded_ones_side_by_side(tmp_path, monkeypatch):
    quiet = lambda *a, **k: None  # noqa: E731
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)  # set, it would hold for every stage (below)
    big = "import time; x = bytearray(300 * 2**20); x[::4096] = b'1' * len(x[::4096]); time.sleep(0.5)"
    stages = [
        Stage("big", "300 MiB", _py(big), threads=1),
        Stage("small", "sleeps", _py("import time; time.sleep(0.5)"), threads=1),
        Stage("alone", "takes both cores", _py("pass"), threads=2),
    ]
    # this process holds 400 MiB more while it starts them (a test session holding models does): Linux counts
    # a parent's memory at fork in its child's peak, which the runner's launcher must keep out of the figures
    ballast = bytearray(400 * 2**20)
    ballast[::4096] = b"1" * len(ballast[::4096])
    records = {r["key"]: r for r in run_stages(stages, tmp_path / "out", cores=2, log=quiet)}
    del ballast
    # peak memory is each stage's own, not the largest child so far nor its parent's
    assert records["big"]["peak_rss_mib"] >= 300 > records["small"]["peak_rss_mib"]
    assert records["alone"]["peak_rss_mib"] < 300
    big, small, alone = records["big"], records["small"], records["alone"]
    assert big["started"] < small["finished"] and small["started"] < big["finished"]  # side by side on 2 cores
    assert alone["started"] >= max(big["finished"], small["finished"]) - 0.05  # it waited for both cores
    assert records["big"]["threads"] == 1 and records["alone"]["threads"] == 2
    # a user's OMP_NUM_THREADS wins, and the runner counts those threads: such stages no longer pair up
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    records = run_stages(stages[:2], tmp_path / "out2", cores=2, log=quiet)
    assert [r["threads"] for r in records] == [2, 2] and records[1]["started"] >= records[0]["finished"] - 0.05


# --- the whole study at tiny size ---------------------------------------------------------------------------------

REPLAY = 0.25  # the tiny study mixes zh/en text into CPT, so the blended-dataset path runs end to end too


def _demo(out: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "tools/demo.py", "--tiny", "--replay", str(REPLAY), "--output", str(out), *extra], cwd=ROOT,
                          capture_output=True, text=True, timeout=1800)


@pytest.fixture(scope="module")
def tiny_study(tmp_path_factory, shared_data):
    out = tmp_path_factory.mktemp("demo") / "tiny"
    proc = _demo(out)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return out, proc.stdout


def _path(p: str) -> Path:
    return Path(p) if Path(p).is_absolute() else ROOT / p


def test_tiny_study_report_structure(tiny_study, shared_data):
    out, stdout = tiny_study
    report = json.loads((out / "report.json").read_text())
    n = TINY.flores_lines
    assert report["seconds"] > 0 and report["cpu_seconds"] > 0
    assert set(report["models"]) == {"base", "cpt", "sft", "cpt_sft"}
    # cpt_sft in every trained phrasing: 14 for zh->bo, 7 for en->bo, phrasing 0 the main table's set on fewer lines
    spread = report["phrasings"]
    assert {d: len(v["chrf"]) for d, v in spread.items()} == {"zh-bo.greedy": 14, "en-bo.greedy": 7}
    assert all(v["min"] <= v["mean"] <= v["max"] for v in spread.values())
    assert "### cpt_sft asked in each trained phrasing" in (out / "report.md").read_text()
    for arm, m in report["models"].items():
        assert m["bits_per_byte"] > 0 and m["bits_per_byte_zh"] > 0 and m["bits_per_byte_en"] > 0
        assert m["bits_per_byte"] != m["bits_per_byte_zh"] != m["bits_per_byte_en"]  # three sets, not one thrice
        for d in ("zh-bo", "en-bo"):
            e = m[d]
            lo, hi = e["chrf_ci95"]
            assert 0 <= lo <= hi <= 100 and 0 <= e["chrf"] <= 100 and 0 <= e["bleu_syllable"] <= 100
            hyps = _path(e["hyp"]).read_text(encoding="utf-8").splitlines()
            assert len(hyps) == n == e["lines"]
            # every output within its length limit, set by its own source line
            lang = d.split("-")[0]
            assert e["max_length_ratio"] == MAX_LENGTH_RATIO[lang] and e["length_ratio"] >= 0
            sources = (shared_data / "eval" / f"flores200.dev.{lang}").read_text(encoding="utf-8").splitlines()[:n]
            assert all(len(h) <= math.ceil(MAX_LENGTH_RATIO[lang] * len(normalize(src))) for h, src in zip(hyps, sources))
    refs = report["references"]
    flores = (shared_data / "eval" / "flores200.dev.bo").read_text(encoding="utf-8").splitlines()[:n]
    assert set(report["reference_tibetan_share"]) == {"zh-bo", "en-bo"}
    for d in ("zh-bo", "en-bo"):
        assert _path(refs[d]).read_text(encoding="utf-8").splitlines() == flores
    for which in ("base", "extended"):
        assert report["tokenizer"][which]["bo"]["tokens_per_syllable"] > 0
    assert report["tokenizer"]["extended"]["bo"]["tokens"] < report["tokenizer"]["base"]["bo"]["tokens"]
    assert report["tokenizer"]["extended"]["zh"]["tokens"] == report["tokenizer"]["base"]["zh"]["tokens"]
    # the sft arm and the cpt_sft arm trained the same number of steps on the same data
    assert report["training"]["sft"]["steps"] == report["training"]["cpt_sft"]["steps"] == TINY.sft_iterations
    for d in ("zh-bo", "en-bo"):
        for other in ("sft", "base", "cpt"):
            s = report["significance"][d][f"cpt_sft_vs_{other}"]["chrf"]
            assert 0 <= s["p_value"] <= 1 and s["cpt_sft"] == pytest.approx(report["models"]["cpt_sft"][d]["chrf"])
    keys = [r["key"] for r in report["stages"]]
    assert keys[:2] == ["tiny_model", "tokenizer"] and {"cpt", "sft", "cpt_sft", "eval_zh", "eval_en", "replay_data"} <= set(keys)
    # replay: the CPT stage read the blend, and its log says the zh/en dataset was in it
    cpt = next(r for r in report["stages"] if r["key"] == "cpt")
    assert report["size"]["replay"] == REPLAY and f"data.weights=[{1 - REPLAY:g},{REPLAY:g}]" in cpt["command"]
    assert f"{REPLAY:.0%} {out}/data/replay_zh_en_text_document" in (out / "logs" / "cpt.log").read_text()
    assert all(r["command"] and r["seconds"] > 0 and r["peak_rss_mib"] > 0 for r in report["stages"])
    md = (out / "report.md").read_text(encoding="utf-8")
    for needle in ("cpt_sft vs sft", "bits per byte", "python -m megatron_tibetan.train --config configs/sft/smollm2-135m.yaml",
                   "tools/extend_tokenizer.py", "p = ", "### Against published levels", "NLLB-200 1.3B", "beyond length",
                   "Replay: 25% of the CPT samples"):
        assert needle in md
    for png in ("bits_per_byte.png", "translation.png", "fertility.png", "training_loss.png"):
        assert (out / png).stat().st_size > 1000
    assert "cpt_sft vs sft, chrF" in stdout


def test_tiny_study_hypotheses_rescore_with_sacrebleu(tiny_study):
    """chrF, syllable BLEU, chrF++ and source dependence of every hypothesis file named in report.json, and the
    reference floor, recomputed by plain sacrebleu with the project's one normalisation on both sides, equal the
    reported figures."""
    out, _ = tiny_study
    report = json.loads((out / "report.json").read_text())
    scored = 0
    for arm, m in report["models"].items():
        for d in ("zh-bo", "en-bo"):
            hyps = [normalize(x) for x in _path(m[d]["hyp"]).read_text(encoding="utf-8").splitlines()]
            refs = [normalize(x) for x in _path(report["references"][d]).read_text(encoding="utf-8").splitlines()]
            assert sacrebleu.corpus_chrf(hyps, [refs]).score == pytest.approx(m[d]["chrf"], abs=1e-9)
            bleu = sacrebleu.corpus_bleu([segment_for_bleu(h) for h in hyps], [[segment_for_bleu(r) for r in refs]],
                                         tokenize="none")
            assert bleu.score == pytest.approx(m[d]["bleu_syllable"], abs=1e-9)
            chrf_pp = sacrebleu.corpus_chrf([segment_for_bleu(h) for h in hyps], [[segment_for_bleu(r) for r in refs]],
                                            word_order=2)
            assert chrf_pp.score == pytest.approx(m[d]["chrf_pp"], abs=1e-9)
            # source dependence: the same hypotheses against line i + n/2 (mod n)'s reference
            other = [refs[(i + len(refs) // 2) % len(refs)] for i in range(len(refs))]
            deranged = sacrebleu.corpus_chrf(hyps, [other]).score
            assert m[d]["chrf_deranged"] == pytest.approx(deranged, abs=1e-9)
            assert m[d]["source_dependence"] == pytest.approx(m[d]["chrf"] - deranged, abs=1e-9)
            assert report["reference_floor"][d]["chrf"] == pytest.approx(sacrebleu.corpus_chrf(other, [refs]).score, abs=1e-9)
            # the length-matched swap: each reference against the hypothesis next to its own in length
            order = sorted(range(len(hyps)), key=lambda i: (len(hyps[i]), i))
            swapped = [""] * len(hyps)
            for k in range(0, len(order) - 1, 2):
                swapped[order[k]], swapped[order[k + 1]] = hyps[order[k + 1]], hyps[order[k]]
            assert len(hyps) % 2 == 0  # the tiny subset: pairs only
            matched = sacrebleu.corpus_chrf(swapped, [refs]).score
            assert m[d]["source_dependence_beyond_length"] == pytest.approx(m[d]["chrf"] - matched, abs=1e-9)
            assert m[d]["source_dependence_length_only"] == pytest.approx(matched - deranged, abs=1e-9)
            tibetan = [tibetan_only(h) for h in hyps]
            in_tibetan = sacrebleu.corpus_chrf(tibetan, [refs]).score - sacrebleu.corpus_chrf(tibetan, [other]).score
            assert m[d]["source_dependence_tibetan"] == pytest.approx(in_tibetan, abs=1e-9)
            scored += m[d]["chrf"] > 0
    assert scored > 0, "every chrF is 0: the comparison would not test anything"


def test_tiny_study_rerun_skips_every_stage(tiny_study):
    out, _ = tiny_study
    records = {p.name: p.read_text() for p in (out / "stages").glob("*.json")}
    weights = sorted((out / "cpt_sft").rglob("*.distcp"))
    mtimes = [p.stat().st_mtime_ns for p in weights]
    before = json.loads((out / "report.json").read_text())
    proc = _demo(out)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "\n$ " not in proc.stdout  # no stage command ran
    assert proc.stdout.count("), skipped") == len(records)
    assert {p.name: p.read_text() for p in (out / "stages").glob("*.json")} == records
    assert weights and [p.stat().st_mtime_ns for p in weights] == mtimes
    after = json.loads((out / "report.json").read_text())
    assert after["models"] == before["models"] and after["seconds"] == before["seconds"]
    assert all(r["skipped"] for r in after["stages"])


def test_length_limit_is_the_sft_pairs_99th_percentile(shared_data):
    """The study's length limit per source language is the 99th percentile of NTREX-128's Tibetan/source
    character ratio (normalised), rounded up to a whole number of characters."""
    import lzma

    import numpy as np

    def lines(path):
        with lzma.open(path, "rt", encoding="utf-8") as f:
            return [normalize(x.rstrip("\n")) for x in f]

    bo = lines(shared_data / "parallel" / "ntrex128.bo.xz")
    for lang, ratio in MAX_LENGTH_RATIO.items():
        src = lines(shared_data / "parallel" / f"ntrex128.{lang}.xz")
        p99 = np.percentile([len(b) / len(s) for b, s in zip(bo, src) if b and s], 99)
        assert ratio == math.ceil(p99)


def test_demo_without_shared_data_is_one_line(tmp_path):
    env = dict(os.environ, MEGATRON_TIBETAN_DATA=str(tmp_path / "nowhere"))
    proc = subprocess.run([sys.executable, "tools/demo.py", "--tiny", "--output", str(tmp_path / "o")], cwd=ROOT,
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and "shared data" in proc.stderr
