"""Preemption: SIGTERM or SIGUSR1 (SLURM's ``--signal``, ``scancel``, the end of an allocation) asks
every rank to checkpoint its running trial at the next step boundary, leave it resumable and take no
more trials, so the job exits 0 and the next job of the study picks the trials up where they were.
A second signal exits at once."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Iterator
from types import FrameType

SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
_EARLY: list[int] = []  # preemption signals that arrived before the search installed its StopRequest


@contextlib.contextmanager
def early_signals_held() -> Iterator[None]:
    """Around ``run``/``resume``: a preemption signal while modules load and the study is prepared
    (seconds; torch alone takes several) is kept instead of killing the job with exit code 143, and
    the search's StopRequest acts on it once installed: no trial is taken and the job exits 0, as one
    preempted later does (the SLURM template counts any other exit code as a failed run). A second
    signal exits at once. The handlers before it are back afterwards."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, _held) for sig in SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        _EARLY.clear()  # after: a signal in between must not outlive the call


def _held(signum: int, _frame: FrameType | None) -> None:
    if _EARLY:
        os._exit(128 + signum)
    _EARLY.append(signum)


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
        if _EARLY and self.signal is None:  # arrived while the job started (see early_signals_held)
            self._handle(_EARLY.pop(), None)

    def restore(self) -> None:
        for sig, handler in self._previous.items():  # (not back to holding: a signal after the search ends it)
            signal.signal(sig, signal.SIG_DFL if handler is _held else handler)  # type: ignore[arg-type]
        self._previous.clear()

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        if self.signal is not None:
            os._exit(128 + signum)  # the second signal: now
        self.signal = signum
        print(f"{signal.Signals(signum).name}: checkpointing the running trial at the next step; no new trials "
              "(send it again to exit at once)", file=sys.stderr, flush=True)
