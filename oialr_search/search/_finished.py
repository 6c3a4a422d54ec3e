"""A study's trials as they finish, read from the store by every process that learns from them.

Each process reads by a watermark, the lowest id still running, so a trial that finishes after a
later-numbered one is still read (the store returns every trial at or above the watermark that is no
longer running; the rows of ids returned before are not read again). A trial another job's start marked
INTERRUPTED while it still ran (two jobs on one study) is looked at again until it has a result.
"""

from __future__ import annotations

from ..storage import INTERRUPTED, RUNNING, Store, Study, Trial


class FinishedTrials:
    """``poll()``: the trials that finished since the last poll (each once) and those running now. A poll
    that fails (a storage error) changes nothing: the next one returns what it would have."""

    def __init__(self, store: Store, study: Study) -> None:
        self.store, self.study = store, study
        self.watermark = 0
        self.seen: set[int] = set()
        self.interrupted: dict[int, int] = {}  # id -> number of trials that may still get a result

    def poll(self) -> tuple[list[Trial], list[Trial]]:
        finished, running, watermark = self.store.finished_since(self.study, self.watermark, seen=self.seen)
        if self.interrupted:
            finished = finished + self.store.trials_numbered(self.study, list(self.interrupted.values()))
        self.watermark = watermark  # both reads done: from here on nothing can fail
        new = []
        for t in finished:
            if t.state in (INTERRUPTED, RUNNING):  # RUNNING: an interrupted one, looked at again
                self.interrupted.setdefault(t.id, t.number)
            elif t.id not in self.seen:
                self.interrupted.pop(t.id, None)
                self.seen.add(t.id)
                new.append(t)
        return new, running
