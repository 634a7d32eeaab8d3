"""The study's stage runner: each stage is a command; stages whose inputs are ready run side by side
within the cores, each with its own log, wall and CPU time and peak memory, and a stage done in an
earlier run (same command, outputs present, nothing it needs ran since) is skipped."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


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


def show(cmd: list[str]) -> str:
    return shlex.join(cmd).replace(shlex.quote(sys.executable), "python")


def rel(path: Path) -> str:
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
            raise StageFailed(f"stage '{self.stage.key}' failed with exit status {code} (log: {rel(self.log_path)}): "
                              f"{show(self.stage.command)}")
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
        done = (old is not None and not force and old["command"] == show(stage.command)
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
                log(f"\n[study] {index[stage.key]}/{n} {stage.title}\n$ {show(stage.command)}", flush=True)
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
            record = {"key": r.stage.key, "title": r.stage.title, "command": show(r.stage.command), **result,
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
