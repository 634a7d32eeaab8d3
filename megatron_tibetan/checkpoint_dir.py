"""What a Megatron checkpoint directory is, and the one atomic way to write an iteration into it.

The layout is Megatron-LM's (``megatron/training/checkpointing.py``), so checkpoints move between the two:

    DIR/
      latest_checkpointed_iteration.txt   the newest *complete* iteration, as a number ("40"); moved only
                                          after that iteration's folder is complete (older checkpoints of
                                          this project have ``latest`` naming the folder: still read)
      iter_0000040/                       megatron-core dist_checkpointing, torch_dist format; the model's
                                          sharded state dict under "model" ("model0", "model1"... for virtual
                                          pipeline chunks); common state "iteration", "checkpoint_version"
                                          (3.0, Megatron-LM's current) and, from training, the optimizer,
                                          "opt_param_scheduler", RNG and "train_state"
      model.json                          what the model is (HF config, family, padded vocabulary, tokenizer):
                                          export and training need nothing else (this project's addition)
      config.yaml                         the resolved training config of the run that wrote the newest
                                          iteration (each iteration folder holds its own copy too)

Every writer goes through :func:`save_iteration`: the state is written into a hidden
``.iter_NNNNNNN.partial`` folder, its ``manifest.json`` (every file, its size and CRC-32) written last, the
folder renamed when every rank is done, and only then does the tracker move, so a process killed mid-save
leaves the previous checkpoint untouched and loadable. A save that fails (no space, quota) removes its
partial folder and raises :class:`CheckpointSaveError`; pruning runs only after the new folder verifies.
Loading checks a folder against its manifest (:func:`verify_iteration`, :func:`newest_verified`); a folder
written before manifests loads with a note. One run writes a directory at a time (:func:`acquire_lock`). :func:`load_model_weights`
is the one weights-only load (conversion, export, fine-tuning). Bottom layer: imports none of the
project's other layers (megatron-core only).
"""

from __future__ import annotations

import json
import os
import shutil
import zlib
from pathlib import Path

MODEL_SPEC = "model.json"
TRACKER = "latest_checkpointed_iteration.txt"
LEGACY_TRACKER = "latest"
CONFIG = "config.yaml"
CHECKPOINT_VERSION = 3.0  # Megatron-LM's; below 2.0 it would reorder the QKV weights on load
SPEC_KEYS = ("family", "hf_config", "padded_vocab_size")


def iteration_dir(root: str | Path, iteration: int) -> Path:
    return Path(root) / f"iter_{iteration:07d}"


def has_checkpoint(root: str | Path) -> bool:
    """Whether ``root`` has a tracker file (a complete save happened)."""
    root = Path(root)
    return (root / TRACKER).is_file() or (root / LEGACY_TRACKER).is_file()


def is_checkpoint_dir(root: str | Path) -> bool:
    return (Path(root) / MODEL_SPEC).is_file() and has_checkpoint(root)


def write_tracker(root: str | Path, iteration: int) -> None:
    """Point the tracker at a finished save; atomic (a crash leaves the old pointer)."""
    root = Path(root)
    tmp = root / f".{TRACKER}.tmp"
    tmp.write_text(f"{iteration}\n")
    os.replace(tmp, root / TRACKER)
    legacy = root / LEGACY_TRACKER
    if legacy.is_file():  # a directory written before the Megatron-LM tracker: keep both in step
        legacy.unlink()


def latest_iteration_dir(root: str | Path) -> Path:
    """The folder of the newest complete iteration (from the tracker file)."""
    root = Path(root)
    tracker, legacy = root / TRACKER, root / LEGACY_TRACKER
    if tracker.is_file():
        text = tracker.read_text().strip()
        if text == "release":
            path = root / "release"
        else:
            try:
                path = iteration_dir(root, int(text))
            except ValueError:
                raise ValueError(f"{tracker}: expected an iteration number or 'release', found {text!r}") from None
    elif legacy.is_file():
        path = root / legacy.read_text().strip()
        tracker = legacy
    else:
        raise FileNotFoundError(f"{root}: no {TRACKER}, so no complete checkpoint (is this a Megatron checkpoint directory?)")
    if not path.is_dir():
        raise FileNotFoundError(f"{tracker} names {path.name}, which does not exist")
    return path


def save_model_spec(root: str | Path, spec: dict) -> None:
    _write_atomic(Path(root) / MODEL_SPEC, json.dumps(spec, indent=2, sort_keys=True) + "\n")


def read_model_spec(root: str | Path) -> dict:
    """The model spec (model.json) of a checkpoint directory, with its required keys checked."""
    path = Path(root) / MODEL_SPEC
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: a Megatron checkpoint directory made by "
                                "tools/convert_checkpoint.py import or by training has one")
    try:
        spec = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from e
    missing = [key for key in SPEC_KEYS if key not in spec]
    if missing:
        raise KeyError(f"{path}: missing key(s) {', '.join(map(repr, missing))}")
    return spec


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


# --- the manifest: what a complete iteration holds ----------------------------------------------------------

MANIFEST = "manifest.json"
_CHUNK = 8 << 20


class CheckpointDamaged(ValueError):
    """An iteration folder that does not match its manifest; the message names the file, expected and found."""


def _crc32(path: Path) -> str:
    value = 0
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            value = zlib.crc32(chunk, value)
    return f"{value:08x}"


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST)


def write_manifest(folder: str | Path) -> dict:
    """Every file of an iteration folder with its size and CRC-32, written last into ``folder/manifest.json``."""
    folder = Path(folder)
    files = {str(p.relative_to(folder)): {"bytes": p.stat().st_size, "crc32": _crc32(p)} for p in _files(folder)}
    manifest = {"version": 1, "files": files}
    _write_atomic(folder / MANIFEST, json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    return manifest


def verify_iteration(folder: str | Path, checksums: bool = True) -> bool:
    """Check an iteration folder against its manifest: every listed file present with its size (and CRC-32
    when ``checksums``), no file missing from the list. Returns False for a folder written before manifests
    (it cannot be verified); raises :class:`CheckpointDamaged` naming the first mismatch."""
    folder = Path(folder)
    path = folder / MANIFEST
    if not folder.is_dir():
        raise CheckpointDamaged(f"{folder}: the iteration folder does not exist")
    if not path.is_file():
        return False
    try:
        files = json.loads(path.read_text())["files"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as error:
        raise CheckpointDamaged(f"{path}: unreadable manifest ({error!r})") from None
    for name, want in files.items():
        file = folder / name
        if not file.is_file():
            raise CheckpointDamaged(f"{file}: missing (the manifest lists it, {want['bytes']} bytes)")
        size = file.stat().st_size
        if size != want["bytes"]:
            raise CheckpointDamaged(f"{file}: {size} bytes, the manifest says {want['bytes']}")
        if checksums and (crc := _crc32(file)) != want["crc32"]:
            raise CheckpointDamaged(f"{file}: CRC-32 {crc}, the manifest says {want['crc32']} (the file is damaged)")
    extra = [str(p.relative_to(folder)) for p in _files(folder) if str(p.relative_to(folder)) not in files]
    if extra:
        raise CheckpointDamaged(f"{folder}: file(s) {', '.join(extra)} not in its manifest (written after it?)")
    return True


def iterations(root: str | Path) -> list[int]:
    """The complete iteration folders of ``root`` (``iter_NNNNNNN``), newest first."""
    found = []
    for p in Path(root).glob("iter_*"):
        suffix = p.name[len("iter_"):]
        if p.is_dir() and suffix.isdigit():
            found.append(int(suffix))
    return sorted(found, reverse=True)


def newest_verified(root: str | Path, strict: bool = False) -> tuple[Path, list[str]]:
    """The iteration folder a resume should load, and one line per iteration skipped on the way. The tracker's
    iteration if it verifies; else (unless ``strict``, which raises) the newest older one that does. Folders
    without a manifest (written before manifests) are loaded with a note that they cannot be verified."""
    root = Path(root)
    notes: list[str] = []
    try:
        named = latest_iteration_dir(root)
    except FileNotFoundError as error:
        if strict or not has_checkpoint(root):
            raise CheckpointDamaged(str(error)) from None
        notes.append(f"{error}")
        named = None
    candidates = ([named] if named is not None else []) + [
        iteration_dir(root, i) for i in iterations(root) if named is None or i < _number(named)]
    for folder in candidates:
        try:
            if not verify_iteration(folder):
                notes.append(f"note: {folder} was written before checkpoint manifests: it cannot be verified")
            return folder, notes
        except CheckpointDamaged as error:
            if strict:
                raise CheckpointDamaged(f"{error} (checkpoint.strict_load: not loading another iteration)") from None
            notes.append(f"WARNING: skipping {folder.name}: {error}")
    raise CheckpointDamaged(f"{root}: no iteration folder verifies: " + "; ".join(notes))


def _number(folder: Path) -> int:
    suffix = folder.name[len("iter_"):]
    return int(suffix) if suffix.isdigit() else -1


# --- collective save and load -----------------------------------------------------------------------------

class CheckpointSaveError(OSError):
    """A save failed (no space, quota, permissions); the message says what was kept."""


def _reason(error: Exception | None) -> str:
    if error is None:
        return "on another rank"
    if isinstance(error, OSError) and error.strerror:
        return f"{error.filename + ': ' if error.filename else ''}{error.strerror}"
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return f"{type(error).__name__}: {lines[-1] if lines else error!r}"


def _free_mb(root: Path) -> int:
    try:
        return shutil.disk_usage(root).free // 2**20
    except OSError:
        return -1


def _all_ok(ok: bool) -> bool:
    import torch

    if not torch.distributed.is_initialized():
        return ok
    device = torch.cuda.current_device() if torch.distributed.get_backend() == "nccl" else "cpu"
    flag = torch.tensor([int(ok)], device=device)
    torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MIN)
    return bool(flag.item())


def _barrier() -> None:
    import torch

    if torch.distributed.is_initialized():
        torch.distributed.barrier()


def is_rank0() -> bool:
    import torch

    return not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0


def unwrap(module):
    """The GPTModel inside DDP / Float16Module wrappers (its sharded_state_dict has the global names)."""
    while hasattr(module, "module"):
        module = module.module
    return module


def model_key(i: int, n: int) -> str:
    """Megatron-LM's key of model chunk ``i`` of ``n``."""
    return "model" if n == 1 else f"model{i}"


def model_sharded_state(model_chunks) -> dict:
    return {model_key(i, len(model_chunks)): unwrap(m).sharded_state_dict() for i, m in enumerate(model_chunks)}


def save_iteration(root: str | Path, iteration: int, state: dict, spec: dict | None = None,
                   config_text: str | None = None, keep_last: int | None = None,
                   protect: tuple[Path, ...] = ()) -> Path:
    """Write ``state`` (a sharded state dict; "iteration" and "checkpoint_version" are added) as
    ``root/iter_NNNNNNN`` atomically, then move the tracker; collective (every rank calls it).

    ``spec`` is written as model.json and ``config_text`` as config.yaml (beside the tracker and inside the
    iteration folder). ``keep_last`` prunes older iteration folders, never one in ``protect`` (for example
    the checkpoint this run started from).
    """
    from megatron.core import dist_checkpointing

    root = Path(root)
    final = iteration_dir(root, iteration)
    partial = root / f".{final.name}.partial"
    previous = root / TRACKER
    previous = previous.read_text().strip() if previous.is_file() else None

    def attempt(step) -> None:  # every rank learns whether any rank failed, then all raise the same error
        error = None
        try:
            step()
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as e:  # an OSError, or torch's CheckpointException (a BaseException) wrapping one
            error = e
        if not _all_ok(error is None):
            if is_rank0():
                shutil.rmtree(partial, ignore_errors=True)
            raise CheckpointSaveError(
                f"saving iteration {iteration} into {root} failed: {_reason(error)} ({_free_mb(root)} MB free on its "
                f"file system); nothing partial is left, and the previous checkpoint "
                f"({'iteration ' + previous if previous else 'none'}) is untouched") from None

    def prepare() -> None:
        if is_rank0():
            _remove(partial)  # the remains of a save that was killed
            partial.mkdir(parents=True)
            if spec is not None:
                save_model_spec(root, spec)

    def finish() -> None:
        if is_rank0():
            if config_text is not None:
                (partial / CONFIG).write_text(config_text)
            write_manifest(partial)  # last: a folder with a manifest was complete when it was written

    attempt(prepare)
    attempt(lambda: dist_checkpointing.save(
        {**state, "iteration": iteration, "checkpoint_version": CHECKPOINT_VERSION}, str(partial)))
    attempt(finish)
    if is_rank0():
        _remove(final)
        os.replace(partial, final)
        write_tracker(root, iteration)
        if config_text is not None:
            _write_atomic(root / CONFIG, config_text)
        if keep_last and verify_iteration(final, checksums=False):  # never prune before the new save verifies
            prune(root, keep_last, protect)
    _barrier()
    return final


def load_model_weights(path: str | Path, model_chunks) -> Path:
    """Load the model weights of an iteration folder, or of a checkpoint directory's newest iteration, into
    this rank's model chunks (any TP/PP: dist_checkpointing reshards), after checking the folder against its
    manifest (:class:`CheckpointDamaged` names a mismatch). Returns the folder read."""
    from megatron.core import dist_checkpointing

    path = Path(path)
    if has_checkpoint(path):
        path = latest_iteration_dir(path)
    if not path.is_dir():
        raise FileNotFoundError(f"checkpoint folder {path} does not exist")
    if is_rank0():
        verify_iteration(path)
    set_model_state(model_chunks, dist_checkpointing.load(model_sharded_state(model_chunks), str(path)))
    return path


def set_model_state(model_chunks, loaded: dict) -> None:
    """Copy the model part of a loaded state dict into the chunks (strict: every parameter)."""
    for i, m in enumerate(model_chunks):
        unwrap(m).load_state_dict(loaded[model_key(i, len(model_chunks))], strict=True)


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)


def prune(root: str | Path, keep_last: int, protect: tuple[Path, ...] = ()) -> list[Path]:
    """Delete all but the newest ``keep_last`` complete iteration folders; never the one the tracker names
    nor any in ``protect``."""
    root = Path(root)
    keep = {latest_iteration_dir(root).resolve(), *(Path(p).resolve() for p in protect)}
    folders = sorted(p for p in root.glob("iter_*") if p.is_dir())
    removed = [p for p in folders[:-keep_last] if p.resolve() not in keep]
    for p in removed:
        _remove(p)
    return removed


# --- one writer per checkpoint directory -------------------------------------------------------------------

LOCK = ".lock"


class CheckpointLocked(RuntimeError):
    """Another live run holds the checkpoint directory."""


def _alive(holder: dict) -> tuple[bool, str]:
    """(whether the lock's holder may still be running, how that was decided)."""
    import socket
    import subprocess

    job = holder.get("slurm_job_id")
    if job and job == os.environ.get("SLURM_JOB_ID"):
        return False, f"it is this Slurm job ({job}), requeued"
    if job:
        try:
            state = subprocess.run(["squeue", "-h", "-j", str(job), "-o", "%T"], capture_output=True, text=True,
                                   timeout=30).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            state = None
        if state == "":
            return False, f"Slurm job {job} has ended"
        if state is not None:
            return True, f"Slurm job {job} is {state.lower()}"
    if holder.get("host") == socket.gethostname():
        try:
            os.kill(int(holder["pid"]), 0)
        except ProcessLookupError:
            return False, f"pid {holder['pid']} is gone"
        except (PermissionError, ValueError, KeyError, TypeError):
            pass
        return True, f"pid {holder.get('pid')} is running on this host"
    return True, "it runs on another host"


def acquire_lock(root: str | Path) -> tuple[Path, str | None]:
    """Take ``root/.lock`` for this process (host, pid, Slurm job id, start time inside). A live holder raises
    :class:`CheckpointLocked` naming it; a dead one's lock is taken over. Returns (the lock file, a warning
    line when a lock was taken over, else None)."""
    import socket
    import time

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    path = root / LOCK
    me = {"host": socket.gethostname(), "pid": os.getpid(), "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
          "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    warning = None
    for _ in range(3):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                holder = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError, UnicodeDecodeError):
                holder = {}
            if holder.get("pid") == os.getpid() and holder.get("host") == me["host"]:
                return path, None  # this process holds it already (an earlier run in the same process)
            alive, why = _alive(holder)
            who = (f"pid {holder.get('pid')} on {holder.get('host')}"
                   + (f", Slurm job {holder['slurm_job_id']}" if holder.get("slurm_job_id") else "")
                   + f", since {holder.get('started')}")
            if alive:
                raise CheckpointLocked(f"{root} is in use: {who} holds {path} ({why}); wait for that run, stop it, "
                                       f"or give this one another checkpoint.dir") from None
            warning = f"WARNING: taking over the lock of {who}: {why}"
            path.unlink(missing_ok=True)
            continue
        with os.fdopen(fd, "w") as f:
            json.dump(me, f)
        import atexit

        atexit.register(release_lock, path)  # also when the run fails before it is closed
        return path, warning
    raise CheckpointLocked(f"{path}: could not take the lock (another run keeps taking it)")


def release_lock(path: str | Path) -> None:
    """Remove the lock if it is still this process's."""
    path = Path(path)
    try:
        if json.loads(path.read_text()).get("pid") == os.getpid():
            path.unlink()
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        pass
