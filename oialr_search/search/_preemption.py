"""Preemption: SIGTERM or SIGUSR1 (SLURM's ``--signal``, ``scancel``, the end of an allocation) asks
every rank to checkpoint its running trial at the next step boundary, leave it resumable and take no
more trials, so the job exits 0 and the next job of the study picks the trials up where they were.
A second signal exits at once."""

from __future__ import annotations

import os
import signal
import sys
import threading
from types import FrameType

SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class StopRequest:
    """``stop()`` is True once a preemption signal arrived (install it with ``install``)."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._previous: dict[int, object] = {}

    def __call__(self) -> bool:
        return self.signal is not None

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers belong to the main thread (a search embedded in a thread is not preempted)
        for sig in SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]
        self._previous.clear()

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        if self.signal is not None:
            os._exit(128 + signum)  # the second signal: now
        self.signal = signum
        print(f"{signal.Signals(signum).name}: checkpointing the running trial at the next step; no new trials "
              "(send it again to exit at once)", file=sys.stderr, flush=True)
