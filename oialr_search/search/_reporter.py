"""Per-epoch reports of a running trial: stored as they happen, then judged by the study's pruner.

Epochs are written as they end, but at most once per ``flush_seconds`` (1 s): a trial whose epochs
take a second or more (every real one) has each epoch in the database as soon as it ends, while
sub-second epochs (benchmarks, toy spaces) are written in batches instead of one transaction each,
which 8 ranks on one SQLite file would queue for. Decision epochs are always written first, so
other trials' pruners see them.

A resumed trial's trainer first reports the epochs its checkpoint restored, which are what the store
holds, value for value (timings included): those are skipped, stored and judged before, except that
the last stored one is judged again where it is a decision epoch (a decision to stop is not stored, so
a job that died before storing the pruned trial's outcome would have lost it). A record of a stored
epoch with other values comes from another run of the trial (it restarted from scratch, its checkpoint
missing or unusable; or the checkpoint is of such a run, which a busy database kept from replacing the
stored epochs before its job ended): the stored epochs from there on are deleted in the transaction
that writes that record, and the new run's records take their place and are judged again, so a
trial's curve does not join two runs (unless the stored epochs cannot be read: then they are kept).

The pruner decides from what the shared store holds for that epoch — every rank's and every job's
trials, whatever the backend — so the same rule holds everywhere and a resumed job keeps pruning
against the trials of the jobs before it.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Sequence

from ..storage import Store, Study, transient
from ..storage._writes import EPOCH_FIELDS
from ._objectives import Objective, minimize_sense, objective_values
from .pruners import BasePruner


class EpochReporter:
    """``reporter(record) -> bool``: store the epoch, then whether the trial goes on."""

    def __init__(self, *, store: Store, study: Study, trial_id: int, objectives: Sequence[Objective],
                 pruner: BasePruner, max_epochs: int, flush_seconds: float = 1.0, stored_epochs: int = 0,
                 label: str | None = None) -> None:
        self.store, self.study, self.trial_id = store, study, trial_id
        self.objectives, self.pruner, self.max_epochs = tuple(objectives), pruner, max_epochs
        self.flush_seconds = flush_seconds
        self._metrics = tuple(o.metric for o in self.objectives)
        self.pruned_at: int | None = None
        self.pending: list[dict] = []  # epochs not written yet (the runner hands them to finish_trial)
        self._flushed = time.monotonic()
        # a resumed trial: epochs up to here are stored and were judged; ``reached`` stays, for the crash count
        self.stored_epochs = self.reached = stored_epochs
        # the first epoch a new run of the trial reported again: stored epochs from it on are to be deleted
        self.rerun_from: int | None = None
        self._stored: dict[int, dict] | None = None  # the stored epochs of a resumed trial, read when first needed
        self._unread = False  # they could not be read
        self.label = label or f"trial id {trial_id}"  # who says it, in warnings

    def flush(self) -> None:
        """Store the pending epochs. A busy or unreachable database keeps them pending (the next flush, or
        the trial's final write, stores them): a lock held past the busy timeout must not fail a healthy
        trial, whose final write would wait for it the same way."""
        try:
            self.store.report_epochs(self.trial_id, self.pending, rerun_from=self.rerun_from, reached=self.reached)
        except RuntimeError as exc:
            if not transient(exc):
                raise
            self._warn(f"storing its epochs failed ({_first_line(exc)}); they are kept and stored later")
        else:
            self.pending, self.rerun_from = [], None
        self._flushed = time.monotonic()

    def _warn(self, text: str) -> None:
        print(f"{self.label}: {text}", file=sys.stderr, flush=True)

    def __call__(self, record: dict) -> bool:
        record = dict(record)
        epoch = record["epoch"]
        rerun = epoch <= self.stored_epochs
        decides = self.pruner.decides_at(epoch, self.max_epochs)
        if rerun and self._as_stored(record):
            # a replay: stored and judged before. But the decision to stop a trial is not stored: a job that died
            # between it and the trial's outcome (or a busy database at that write) lost it, so the last stored
            # epoch is judged again where it is a decision epoch
            return self._judge(record) if decides and epoch == self.reached else True
        if rerun:  # another run of stored epochs: they go, this run's records take their place
            self.rerun_from = epoch if self.rerun_from is None else min(self.rerun_from, epoch)
            self.stored_epochs = epoch - 1
            self.pending = [r for r in self.pending if r["epoch"] < epoch]
        self.pending.append(record)
        if rerun or decides or time.monotonic() - self._flushed >= self.flush_seconds:
            self.flush()
        return self._judge(record) if decides else True

    def _judge(self, record: dict) -> bool:
        """The pruner's decision on the trial at ``record``'s epoch, from the study's stored values there."""
        epoch = record["epoch"]
        try:
            rows = self.store.epoch_values(self.study, epoch, self._metrics, exclude_trial=self.trial_id)
        except RuntimeError as exc:
            if not transient(exc):
                raise
            self._warn(f"the pruner could not read the study's epoch {epoch} ({_first_line(exc)}); the trial goes on")
            return True
        peers = [minimize_sense(row, self.objectives) for row in rows]
        own = minimize_sense(objective_values(record, self.objectives), self.objectives)
        if self.pruner.should_prune(values=own, peers=peers):
            self.pruned_at = epoch
            return False
        return True

    def _as_stored(self, record: dict) -> bool:
        """Whether ``record`` is what the store holds for its epoch (a replay). If the stored epochs cannot be
        read, every record counts as one: the stored epochs are kept, as they were before runs were told apart
        (a read that worked later would tell a new run only from there on, joining two runs' curves)."""
        if self._stored is None:
            try:
                self._stored = {row["epoch"]: row for row in self.store.epochs(self.trial_id)}
            except RuntimeError as exc:
                if not transient(exc):
                    raise
                self._warn(f"reading its stored epochs failed ({_first_line(exc)}); they are kept as they are")
                self._stored = {}
                self._unread = True
        if self._unread:
            return True
        row = self._stored.get(record["epoch"])
        return row is not None and all(_same(record.get(k), row.get(k)) for k in EPOCH_FIELDS)


def _same(a: object, b: object) -> bool:
    """Equal as stored: NaN and inf are stored as NULL, and a float as the database gives it back (PostgreSQL
    sends 15 significant digits where ``extra_float_digits`` is 0, its default before version 12). Another run
    differs by far more, in its timings at least."""
    def stored(v: object) -> object:
        return None if isinstance(v, float) and not math.isfinite(v) else v

    a, b = stored(a), stored(b)
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return math.isclose(a, b, rel_tol=1e-12, abs_tol=0.0)
    return a == b


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
