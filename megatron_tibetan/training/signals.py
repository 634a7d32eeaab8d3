"""Exit signals: a pre-emption or time-limit signal makes every rank finish its step, save and stop.

Which signals: ``train.exit_signals``, by default SIGTERM (the scheduler ends, pre-empts or requeues the
job) and SIGUSR1 (Slurm's warning before the time limit, ``#SBATCH --signal=USR1@N``, or
``scancel --signal=USR1``); the submitit launcher adds submitit's own (USR2). The handler only records
which signal arrived; the loop asks :meth:`ExitSignal.agreed` at the end of each step (an all-reduce, so
every rank stops after the same step, even when only some ranks got the signal).

Handlers nest: an entry point arms an :class:`ExitSignal` before its slow imports, so a signal during
start-up is not lost (USR1's default action would kill the process); the loop's own ExitSignal takes it
over when it starts, and passes every signal it gets back out to the outer one, which therefore knows,
after the run, which signal stopped it (SIGTERM: the scheduler is ending the job; USR1/USR2: a warning
that the job should save and requeue itself).
"""

from __future__ import annotations

import signal

DEFAULT_EXIT_SIGNALS = ("SIGTERM", "SIGUSR1")
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
