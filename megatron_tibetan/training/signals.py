"""The exit signal: a pre-emption or time-limit signal makes every rank finish its step, save and stop.

The handler only records that the signal arrived; the loop asks :meth:`ExitSignal.agreed` at the end of
each step (an all-reduce, so every rank stops after the same step, even when only some got the signal).
"""

from __future__ import annotations

import signal


class ExitSignal:
    """Remembers that the exit signal arrived; the loop saves and stops at the end of the step."""

    def __init__(self, name: str):
        self.name = name
        self.received = False
        self.signum = getattr(signal, name)
        self.previous = signal.signal(self.signum, self._handle)

    def _handle(self, signum, frame):
        self.received = True

    def agreed(self, device) -> bool:
        """Whether any rank received the signal (collective: every rank calls it once per step)."""
        import torch

        flag = torch.tensor([int(self.received)], device=device)
        if torch.distributed.is_initialized():
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return bool(flag.item())

    def restore(self) -> None:
        signal.signal(self.signum, self.previous)
