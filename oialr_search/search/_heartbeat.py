"""Heartbeats: how a job tells the others that its RUNNING trials are alive.

While a rank trains a trial, a daemon thread refreshes the trial's heartbeat every ``interval`` seconds
(one short write, off the training thread). A RUNNING trial whose heartbeat is older than ``grace``
(several intervals) belongs to a job that died: the next job that looks claims it and resumes it from
its checkpoint. So several jobs can work on one study at once, and none mistakes a live trial of
another for a dead one, as Optuna's heartbeats do for its RDB storage.

``OIALR_SEARCH_HEARTBEAT`` sets the interval in seconds (default 10; the grace is 6 intervals). Each beat
also stores the trial's deadline, the beat's time plus the grace period, so that jobs with other intervals
judge the trial by this job's grace period, not their own.
"""

from __future__ import annotations

import sys
import threading

from .._environment import seconds_from_env
from ..storage import Store

DEFAULT_INTERVAL = 10.0
GRACE_INTERVALS = 6  # beats a trial may miss before it is dead: a busy database or a stalled thread is not a death


def heartbeat_interval() -> float:
    """Seconds between heartbeats; raises EnvironmentSettingError for a malformed ``OIALR_SEARCH_HEARTBEAT``."""
    return seconds_from_env("OIALR_SEARCH_HEARTBEAT", DEFAULT_INTERVAL)


def grace_period() -> float:
    """Seconds without a heartbeat after which a RUNNING trial is dead."""
    return GRACE_INTERVALS * heartbeat_interval()


class Heartbeat:
    """Beats for one trial at a time: ``start(trial_id)`` … ``stop()``."""

    def __init__(self, store: Store, *, interval: float | None = None) -> None:
        self.store = store
        self.interval = interval or heartbeat_interval()
        self.grace = GRACE_INTERVALS * self.interval  # the deadline each beat sets
        self._trial: int | None = None
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self._warned = False
        self._closed = False
        self.lost = False
        self._thread = threading.Thread(target=self._run, name="oialr-heartbeat", daemon=True)
        self._thread.start()

    def start(self, trial_id: int) -> None:
        with self._lock:
            self._trial = trial_id
            self.lost = False  # set when a beat finds that another job took the trial over

    def stop(self) -> None:
        with self._lock:
            self._trial = None

    def close(self) -> None:
        """End the thread (it must not outlive the search: it holds the store's connections, and SQLite
        folds its WAL into the database only when the last connection closes)."""
        self._closed = True
        self._wake.set()
        self._thread.join(timeout=30)  # a beat stuck behind a writer must not hold the job's end

    def _run(self) -> None:
        while not self._closed:
            self._wake.wait(self.interval)
            with self._lock:  # held across the write, so stop() returns only after a beat in flight ended
                if self._trial is None or self._closed:
                    continue
                try:
                    if not self.store.beat(self._trial, grace=self.grace):
                        self.lost = True
                except Exception as exc:  # noqa: BLE001 - the next beat retries; the training must go on
                    if not self._warned:
                        self._warned = True
                        print(f"heartbeat of trial id {self._trial} failed ({type(exc).__name__}: "
                              f"{str(exc).splitlines()[0]}); retrying every {self.interval:g}s", file=sys.stderr,
                              flush=True)
