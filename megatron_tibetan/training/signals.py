"""Exit signals: a pre-emption or time-limit signal makes every rank finish its step, save and stop.

Which signals: ``train.exit_signals``, by default SIGTERM (the scheduler ends, pre-empts or requeues the
job), SIGUSR1 (Slurm's warning before the time limit, ``#SBATCH --signal=USR1@N``, or
``scancel --signal=USR1``) and SIGINT (Ctrl-C in a terminal); the submitit launcher adds submitit's own
(USR2). The handler only records which signal arrived; the loop asks :meth:`ExitSignal.agreed` at the end
of each step (an all-reduce, so every rank stops after the same step, even when only some ranks got the
signal). A repeated signal changes nothing (a scheduler may send SIGTERM again while the ranks save),
except a second Ctrl-C, which stops at once without saving (KeyboardInterrupt).

A stop signal usually reaches every process of the run, not only the training process: Slurm's
pre-emption, ``scancel``, ``scontrol requeue`` and the time limit signal all processes of a step, and so
do a terminal's Ctrl-C, ``timeout``, systemd and container runtimes. The helper processes a save starts
(megatron-core's checkpoint writers, the multiprocessing manager and resource tracker they use) would die
of it half-way through the save. :func:`shield_checkpoint_writer` starts the one that would (a spawned
manager process) with the exit signals ignored, so it leaves stopping to the training process.

Handlers nest: an entry point arms an :class:`ExitSignal` before its slow imports, so a signal during
start-up is not lost (USR1's default action would kill the process); the loop's own ExitSignal takes it
over when it starts, and passes every signal it gets back out to the outer one, which therefore knows,
after the run, which signal stopped it (SIGTERM: the scheduler is ending the job; USR1/USR2: a warning
that the job should save and requeue itself).
"""

from __future__ import annotations

import signal

DEFAULT_EXIT_SIGNALS = ("SIGTERM", "SIGUSR1", "SIGINT")
UNCATCHABLE = ("SIGKILL", "SIGSTOP")


def check_signal_names(names, where: str = "train.exit_signals") -> list[str]:
    """``names`` as a list of catchable signal names (``SIGUSR1``; ``USR1`` is accepted too), else ValueError."""
    names = [names] if isinstance(names, str) else list(names)
    out = []
    for name in names:
        full = name if str(name).startswith("SIG") else f"SIG{name}"
        if full not in signal.Signals.__members__ or full in UNCATCHABLE:
            raise ValueError(f"{where}: {name!r} is not a signal that can be caught (e.g. SIGTERM, SIGUSR1)")
        out.append(full)
    return out


def _exit_signal_of(handler) -> "ExitSignal | None":
    owner = getattr(handler, "__self__", None)
    return owner if isinstance(owner, ExitSignal) else None


class ExitSignal:
    """Records the first of ``names`` to arrive (``received``: its name, or None); the loop saves and stops
    at the end of the step. :meth:`restore` puts the previous handlers back."""

    def __init__(self, names=DEFAULT_EXIT_SIGNALS):
        self.names = check_signal_names(names)
        self.received: str | None = None
        self.previous = {}
        for name in self.names:
            signum = signal.Signals[name]
            self.previous[signum] = signal.signal(signum, self._handle)
            outer = _exit_signal_of(self.previous[signum])
            if outer is not None and outer.received in self.names and self.received is None:
                self.received = outer.received  # arrived before this handler was installed

    def _handle(self, signum, frame) -> None:
        if signum == signal.SIGINT and self.received == "SIGINT":
            raise KeyboardInterrupt("a second Ctrl-C: stopped without saving")
        self.received = self.received or signal.Signals(signum).name
        outer = _exit_signal_of(self.previous.get(signum))
        if outer is not None:
            outer._handle(signum, frame)

    def agreed(self, device) -> bool:
        """Whether any rank received an exit signal (collective: every rank calls it once per step)."""
        import torch

        flag = torch.tensor([int(self.received is not None)], device=device)
        if torch.distributed.is_initialized():
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return bool(flag.item())

    def restore(self) -> None:
        for signum, previous in self.previous.items():
            signal.signal(signum, signal.SIG_DFL if previous is None else previous)  # None: set outside Python



def ignore_signals(names) -> None:
    """In a helper process: leave ``names`` to the training process (a process initializer)."""
    for name in names:
        signal.signal(signal.Signals[name], signal.SIG_IGN)


_WRITER_MANAGER = None  # the checkpoint writer's result-queue manager, started by shield_checkpoint_writer
_WRITER_CHECKED = False


def shield_checkpoint_writer(names=DEFAULT_EXIT_SIGNALS) -> str | None:
    """Start the one helper of megatron-core's checkpoint writer that a group-wide stop signal would end mid-save,
    with ``names`` ignored in it (see the module docstring): the multiprocessing manager (a spawned process,
    so it keeps no handler of ours) through which the writer's forked workers return their results. The
    forked workers inherit this process's handlers, and the resource tracker ignores SIGINT and SIGTERM and is
    relaunched by multiprocessing if another signal ends it. Returns, on the first call only, a note when this
    megatron-core writes differently (nothing then could be shielded), else None."""
    global _WRITER_MANAGER, _WRITER_CHECKED
    from megatron.core.dist_checkpointing.strategies import filesystem_async

    if _WRITER_CHECKED:
        return None
    _WRITER_CHECKED = True
    if getattr(filesystem_async, "_results_queue", "absent") is not None or not hasattr(filesystem_async, "_get_write_results_queue"):
        return ("this megatron-core's checkpoint writer has no results-queue manager to start: a stop signal sent to the "
                "whole process group may end its helpers during a save (send it to the training processes only)")
    import multiprocessing
    from multiprocessing.managers import SyncManager

    names = check_signal_names(names)
    signums = [signal.Signals[name] for name in names]
    # ignored while the manager starts, so it is born ignoring them (an ignored disposition survives fork and
    # exec) and no signal ends it before its initializer runs; blocked here, so one that arrives meanwhile stays
    # pending for this process's own handler
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, signums)
    handlers = {signum: signal.signal(signum, signal.SIG_IGN) for signum in signums}
    try:
        manager = SyncManager(ctx=multiprocessing.get_context("spawn"))
        manager.start(initializer=ignore_signals, initargs=(names,))
    finally:
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
    filesystem_async._results_queue = manager.Queue()
    _WRITER_MANAGER = manager
    return None
