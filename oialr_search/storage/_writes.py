"""The per-trial writes (start, per-epoch reports, finish), written once against a tiny executor
interface with two implementations: SQLAlchemy Core on any database, and the raw sqlite3 connection
on SQLite.

Why two: every rank runs these after every trial, and SQLite has one write lock. Core spends about
0.15 ms building and executing each statement, all of it while holding the lock, which made the
service's own cost per trial two to three times plain Propulate's with 8 ranks (bench/search.py,
zero-cost mode). The sqlite3 executor runs the same statements, compiled once by SQLAlchemy from the
same table definitions, with the values passed through the same column-type processors, so it writes
exactly the rows the Core executor writes (tests/storage/test_writes.py compares them).
"""

from __future__ import annotations

import math
import sqlite3
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any, Protocol

from sqlalchemy import and_, bindparam, case, delete, func, insert, or_, select, update
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.sql import Executable

from ..exceptions import OIALRSearchError
from ._errors import ConnectFailed
from ._schema import INTERRUPTED, RUNNING, EpochRow, StudyRow, TrialPayloadRow, TrialRow
from ._sqlite import _READ_ONLY, _begin_immediate


class TrialTakenOver(OIALRSearchError):
    """The trial was claimed by another job (its heartbeat looked dead): this run may not write to it."""

EPOCH_FIELDS = ("epoch", "step", "train_loss", "val_loss", "top1", "top5", "lr", "trainable_fraction", "seconds",
                "compression", "train_seconds")

# The statements, built once. Values come as bound parameters, so both executors can cache them.
# FOR NO KEY UPDATE on the study's row serializes start_trial per study on a server database (see
# start_trial); it blocks no reader and, unlike FOR UPDATE, not the foreign-key checks of other inserts.
# SQLite compiles it to a plain read of one row: there BEGIN IMMEDIATE already serializes every writer.
_LOCK_STUDY = select(StudyRow.budget).where(StudyRow.id == bindparam("sid")).with_for_update(key_share=True)
_TAKEN = select(func.count()).where(TrialRow.study_id == bindparam("sid"), TrialRow.state != INTERRUPTED)
_NEXT_NUMBER = select(func.coalesce(func.max(TrialRow.number), -1) + 1).where(TrialRow.study_id == bindparam("sid"))
_INSERT_TRIAL = insert(TrialRow)
_INSERT_PAYLOAD = insert(TrialPayloadRow)
_INSERT_EPOCH = insert(EpochRow)
_DELETE_EPOCHS_FROM = delete(EpochRow).where(EpochRow.trial_id == bindparam("tid"),
                                             EpochRow.epoch >= bindparam("first"))
_TRIAL_CLOCK = select(TrialRow.started, TrialRow.last_epoch).where(TrialRow.id == bindparam("tid"))
_UPDATE_TRIAL = update(TrialRow).where(TrialRow.id == bindparam("tid"))
_UPDATE_OWNED = update(TrialRow).where(TrialRow.id == bindparam("tid"), TrialRow.owner == bindparam("me"))
_UPDATE_PAYLOAD = update(TrialPayloadRow).where(TrialPayloadRow.trial_id == bindparam("tid"))


NUMBER_CONSTRAINT = "uq_oialr_trial_number"  # unique (study_id, number): see number_taken


def finite(value: Any) -> Any:
    """``value`` (a float or a JSON document) with every NaN and ±inf replaced by None.

    Standard JSON has no NaN: PostgreSQL's json type rejects Python's ``NaN`` token, which made storing
    a diverged trial's metrics fail. So every database stores null, SQLite too, although its JSON
    columns would keep the token: one stored form everywhere, and SQLite's own JSON functions (which
    objective_points uses) reject the token before SQLite 3.42. Rows written before still read back
    as NaN (the JSON columns decode with Python's json, which accepts the token). Returns ``value``
    itself when it holds nothing to replace, so the common case allocates nothing.
    """
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        cleaned = {k: finite(v) for k, v in value.items()}
        return value if all(cleaned[k] is v for k, v in value.items()) else cleaned
    if isinstance(value, (list, tuple)):
        items = [finite(v) for v in value]
        return value if all(a is b for a, b in zip(items, value)) else items
    return value


def number_taken(exc: BaseException | None) -> bool:
    """Whether ``exc`` (the cause of a rolled-back write) is a clash on the trial-number constraint:
    the one integrity error start_trial may retry. Any other (a missing study, a NOT NULL) would fail
    the same way again, and retrying would only hide it behind "could not allocate a trial number"."""
    if not isinstance(exc, IntegrityError):
        return False
    orig = exc.orig
    name = getattr(getattr(orig, "diag", None), "constraint_name", None)  # psycopg2 and psycopg
    if name is not None:
        return name == NUMBER_CONSTRAINT
    # other drivers name the constraint (MySQL) or its columns (SQLite) in the message
    text = str(orig)
    return NUMBER_CONSTRAINT in text or "oialr_trials.study_id, oialr_trials.number" in text


def epoch_row(trial_id: int, record: dict) -> dict:
    """An epoch row; NaN and inf become NULL (what SQLite would make of a NaN anyway)."""
    return {"trial_id": trial_id, **{k: finite(record.get(k)) for k in EPOCH_FIELDS}}


class Executor(Protocol):
    """What the write functions below need from a transaction."""

    def one(self, stmt: Executable, params: dict) -> tuple: ...
    def first(self, stmt: Executable, params: dict) -> tuple | None: ...
    def run(self, stmt: Executable, params: dict) -> int | None: ...  # the inserted primary key, or rows updated
    def many(self, stmt: Executable, rows: list[dict]) -> None: ...


# -- the writes, once ---------------------------------------------------------------------------------

def start_trial(tx: Executor, *, study_id: int, row: dict, config: dict | None,
                limit: int | None) -> tuple[int, int] | None:
    """Insert a RUNNING trial with the next number; (id, number), or None once ``limit`` trials exist.

    The count, the next number and the insert must see every trial committed before them, or two
    writers take the same number (one fails) or both fit under the limit (one too many). On a server
    database the study's row lock makes concurrent calls for one study take turns: each statement after
    it, under READ COMMITTED, sees what the previous holder committed. On SQLite BEGIN IMMEDIATE does
    the same for the whole file. The unique (study, number) constraint stays the last line of defence
    (Store.start_trial retries on it, e.g. under REPEATABLE READ where the snapshot predates the lock).
    """
    locked = tx.first(_LOCK_STUDY, {"sid": study_id})  # None for a missing study: its insert fails on the foreign key
    if limit is not None and locked is not None:
        limit = min(limit, locked[0])  # the stored budget, which another job may have lowered since this one began
    if limit is not None and tx.one(_TAKEN, {"sid": study_id})[0] >= limit:
        return None
    number = tx.one(_NEXT_NUMBER, {"sid": study_id})[0]
    trial_id = tx.run(_INSERT_TRIAL, {**row, "params": finite(row.get("params")), "study_id": study_id,
                                      "number": number, "state": RUNNING})
    tx.run(_INSERT_PAYLOAD, {"trial_id": trial_id, "config": finite(config)})
    return trial_id, number


def _update_owned(tx: Executor, trial_id: int, owner: str | None, fields: dict) -> None:
    """Update the trial if ``owner`` still holds it (None: whoever does); else raise TrialTakenOver,
    which rolls back the whole transaction."""
    if owner is None:
        tx.run(_UPDATE_TRIAL, {"tid": trial_id, **fields})
    elif not tx.run(_UPDATE_OWNED, {"tid": trial_id, "me": owner, **fields}):
        raise TrialTakenOver(f"trial id {trial_id} was taken over by another job (its heartbeat looked dead)")


def _rerun(tx: Executor, trial_id: int, reported: int | None, rerun_from: int | None) -> int:
    """The last epoch stored once a new run's epochs from ``rerun_from`` on have replaced the stored ones
    (None: no new run): those are deleted here."""
    reported = reported or 0
    if rerun_from is not None and rerun_from <= reported:
        tx.run(_DELETE_EPOCHS_FROM, {"tid": trial_id, "first": rerun_from})
        reported = rerun_from - 1
    return reported


def report_epochs(tx: Executor, trial_id: int, records: list[dict], owner: str | None = None, *,
                  rerun_from: int | None = None, reached: int | None = None) -> None:
    """Add the epochs of ``records`` after the last one stored: a retry of a report whose commit went
    through while its answer was lost (a dropped connection) adds nothing, where it failed on the unique
    (trial, epoch) before. ``rerun_from``: the records are a new run of the trial (it restarted from
    scratch), whose epochs from this one on replace the stored ones. ``reached``: the last epoch the trial
    had reached before this run (default: the last one stored)."""
    stored = tx.one(_TRIAL_CLOCK, {"tid": trial_id})[1] or 0
    reported = _rerun(tx, trial_id, stored, rerun_from)
    new = [r for r in records if r["epoch"] > reported]
    if new:
        tx.many(_INSERT_EPOCH, [epoch_row(trial_id, r) for r in new])
    # progress: a death of a run that follows is not one of a trial that kills every run (see claim_dead); epochs
    # a restarted run stores again, up to where the trial had got, are none (a trial that restarts from scratch
    # and dies each time must still be given up)
    reached = stored if reached is None else reached
    progress = any(r["epoch"] > reached for r in new)
    _update_owned(tx, trial_id, owner, {"last_epoch": max((r["epoch"] for r in new), default=reported),
                                        **({"crashes": 0} if progress else {})})


def finish_trial(tx: Executor, trial_id: int, *, fields: dict, epochs: list[dict] | None,
                 rank_trajectory: list | None, finished: datetime, owner: str | None = None,
                 rerun_from: int | None = None) -> None:
    """Store the outcome ``fields``; of ``epochs`` only those after the last reported one are added
    (``rerun_from``: as for ``report_epochs``).
    Non-finite floats become None (see ``finite``): a NaN loss must not make the write fail, which would
    leave the trial RUNNING, nor (in the value column, where PostgreSQL keeps NaN and SQLite does not)
    sort as the best trial."""
    fields = finite(fields)
    started, reported = tx.one(_TRIAL_CLOCK, {"tid": trial_id})
    reported = _rerun(tx, trial_id, reported, rerun_from)
    new = [e for e in epochs or [] if e["epoch"] > reported]
    if new:
        tx.many(_INSERT_EPOCH, [epoch_row(trial_id, e) for e in new])
    _update_owned(tx, trial_id, owner, {**fields, "finished": finished, "deadline": None,
                                        "duration": (finished - started).total_seconds(),
                                        "last_epoch": new[-1]["epoch"] if new else reported})
    if rank_trajectory is not None:
        tx.run(_UPDATE_PAYLOAD, {"tid": trial_id, "rank_trajectory": finite(rank_trajectory)})


# -- the executors ------------------------------------------------------------------------------------

class CoreExecutor:
    """SQLAlchemy Core on one connection in a transaction: any database."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def one(self, stmt: Executable, params: dict) -> tuple:
        return tuple(self.conn.execute(stmt, params).one())

    def first(self, stmt: Executable, params: dict) -> tuple | None:
        row = self.conn.execute(stmt, params).first()
        return tuple(row) if row is not None else None

    def run(self, stmt: Executable, params: dict) -> int | None:
        result = self.conn.execute(stmt, params)
        return result.inserted_primary_key[0] if result.is_insert else result.rowcount

    def many(self, stmt: Executable, rows: list[dict]) -> None:
        self.conn.execute(stmt, rows)


class _Compiled:
    """One statement compiled for SQLite: its SQL, the order of its parameters, their type
    processors (JSON encoding, datetime formatting) and, for a select, its result processors."""

    def __init__(self, stmt: Executable, keys: tuple[str, ...], dialect: Any) -> None:
        compiled = stmt.compile(dialect=dialect, column_keys=list(keys))
        self.sql = str(compiled)
        self.order = compiled.positiontup
        self.literals = {name: b.effective_value for name, b in compiled.binds.items() if name not in keys}
        self.binds: dict[str, Callable | None] = {
            name: b.type.dialect_impl(dialect).bind_processor(dialect) for name, b in compiled.binds.items()}
        columns = getattr(stmt, "selected_columns", None)
        self.results = [c.type.dialect_impl(dialect).result_processor(dialect, None) for c in columns] \
            if columns is not None and not getattr(stmt, "is_dml", False) else []

    def args(self, params: dict) -> tuple:
        out = []
        for name in self.order:
            value = params[name] if name in params else self.literals[name]
            proc = self.binds[name]
            out.append(proc(value) if proc is not None else value)  # None too: JSON encodes it as 'null'
        return tuple(out)

    def row(self, raw: tuple) -> tuple:
        return tuple(p(v) if p is not None else v for p, v in zip(self.results, raw, strict=True))


class SQLiteExecutor:
    """The same statements on the raw sqlite3 connection (see the module docstring)."""

    def __init__(self, conn: sqlite3.Connection, cache: dict, dialect: Any) -> None:
        self.conn, self.cache, self.dialect = conn, cache, dialect

    def _compiled(self, stmt: Executable, keys: tuple[str, ...]) -> _Compiled:
        key = (id(stmt), keys)
        if key not in self.cache:
            self.cache[key] = _Compiled(stmt, keys, self.dialect)
        return self.cache[key]

    def one(self, stmt: Executable, params: dict) -> tuple:
        row = self.first(stmt, params)
        assert row is not None, "one() found no row"
        return row

    def first(self, stmt: Executable, params: dict) -> tuple | None:
        c = self._compiled(stmt, tuple(params))
        raw = self.conn.execute(c.sql, c.args(params)).fetchone()
        return c.row(raw) if raw is not None else None

    def run(self, stmt: Executable, params: dict) -> int | None:
        c = self._compiled(stmt, tuple(params))
        cursor = self.conn.execute(c.sql, c.args(params))
        return cursor.lastrowid if getattr(stmt, "is_insert", False) else cursor.rowcount

    def many(self, stmt: Executable, rows: list[dict]) -> None:
        if rows:
            c = self._compiled(stmt, tuple(rows[0]))
            self.conn.executemany(c.sql, [c.args(r) for r in rows])


class Transactions:
    """Write transactions for the functions above: raw sqlite3 on SQLite (unless ``core``), else Core.
    Either way an error rolls back and re-raises as RuntimeError with the database's message, its
    cause an IntegrityError when a constraint failed (the trial-number retry looks for that)."""

    def __init__(self, engine: Engine, url: str, *, core: bool = False) -> None:
        self.engine, self.url = engine, url
        self.raw = engine.dialect.name == "sqlite" and not core
        self._cache: dict = {}

    def _connect(self, what: str) -> Any:
        """A pooled raw connection; failing to get one (the connect events' PRAGMAs meet a locked database, no
        file handle left) is a RuntimeError like the transaction's own, so that callers see one kind of storage
        error, and one that passes (ConnectFailed)."""
        try:
            return self.engine.raw_connection()
        except (SQLAlchemyError, sqlite3.Error) as exc:
            raise ConnectFailed(f"storage {self.url}: {what} (connecting failed: {exc})") from exc

    @contextmanager
    def read(self) -> Iterator[Executor]:
        """A read outside any write transaction: on SQLite each statement reads its own snapshot and never
        waits for, or blocks, the write lock (hot-path checks that usually find nothing use it)."""
        if not self.raw:
            try:
                with self.engine.connect().execution_options(**{_READ_ONLY: True}) as conn:
                    yield CoreExecutor(conn)
            except SQLAlchemyError as exc:
                raise RuntimeError(f"storage {self.url}: read failed: {exc}") from exc
            return
        pooled = self._connect("read")
        try:
            yield SQLiteExecutor(pooled.driver_connection, self._cache, self.engine.dialect)
        except sqlite3.Error as exc:
            raise RuntimeError(f"storage {self.url}: read failed: ({exc.__class__.__name__}) {exc}") from exc
        finally:
            pooled.close()

    @contextmanager
    def write(self) -> Iterator[Executor]:
        if not self.raw:
            try:
                with self.engine.begin() as conn:
                    yield CoreExecutor(conn)
            except SQLAlchemyError as exc:
                raise RuntimeError(f"storage {self.url}: transaction rolled back: {exc}") from exc
            return
        pooled = self._connect("no write lock")  # connect events ran: WAL, busy timeout, foreign keys
        try:
            conn = pooled.driver_connection
            try:
                _begin_immediate(conn)
            except sqlite3.Error as exc:  # the write lock did not come within the busy timeout
                raise RuntimeError(f"storage {self.url}: no write lock ({exc})") from exc
            try:
                yield SQLiteExecutor(conn, self._cache, self.engine.dialect)
                conn.execute("COMMIT")
            except BaseException as exc:
                if conn.in_transaction:  # some errors end the transaction themselves
                    conn.execute("ROLLBACK")
                if not isinstance(exc, Exception) or isinstance(exc, OIALRSearchError):
                    raise  # KeyboardInterrupt and the like, and our own errors, as they are
                # Core wraps every error (a value a type processor cannot encode too) as a StatementError;
                # callers rely on RuntimeError with the cause, e.g. to never leave a trial RUNNING
                cause = IntegrityError(None, None, exc) if isinstance(exc, sqlite3.IntegrityError) else exc
                raise RuntimeError(f"storage {self.url}: transaction rolled back: "
                                   f"({exc.__class__.__name__}) {exc}") from cause
        finally:
            pooled.close()


# -- liveness ------------------------------------------------------------------------------------------
# A RUNNING trial is dead once its deadline has passed (v7: the holding job's last beat plus that job's grace
# period, so jobs with different heartbeat intervals judge a trial alike); one without a deadline (released by
# its job, or written by an earlier release) once its heartbeat is NULL or older than ``cutoff`` (the looking
# job's grace period ago). A deadline counts only under an owner token of a job that keeps it (DEADLINE_OWNER):
# a job of an earlier release, which may run on after an upgrade (one refuses only while trials are RUNNING),
# claims, beats and releases with its own token and leaves the deadline as it was, which would make its live
# trial look dead.
DEADLINE_OWNER = "dl:"
_MARKED = func.substr(TrialRow.owner, 1, len(DEADLINE_OWNER)) == DEADLINE_OWNER  # (LIKE ignores case on SQLite)
_COUNTS = and_(TrialRow.deadline.is_not(None), _MARKED)
_IGNORED = or_(TrialRow.deadline.is_(None), TrialRow.owner.is_(None), ~_MARKED)
DEADLINE = case((_COUNTS, TrialRow.deadline), else_=None)  # the deadline that counts, or NULL
_IS_DEAD = or_(and_(_COUNTS, TrialRow.deadline < bindparam("now")),
               and_(_IGNORED, or_(TrialRow.heartbeat.is_(None), TrialRow.heartbeat < bindparam("cutoff"))))
# both only while the caller still holds the trial: a run that lost it must not keep it alive, or free it
_BEAT = update(TrialRow).where(TrialRow.id == bindparam("tid"), TrialRow.state == RUNNING,
                               TrialRow.owner == bindparam("me"))
_RELEASE = _BEAT
_DEAD = (select(TrialRow.id, TrialRow.heartbeat, TrialRow.crashes)
         .where(TrialRow.study_id == bindparam("sid"), TrialRow.state == RUNNING, _IS_DEAD)
         .order_by(TrialRow.number).limit(1).with_for_update(skip_locked=True))
_ANY_DEAD = select(TrialRow.id).where(TrialRow.study_id == bindparam("sid"), TrialRow.state == RUNNING,
                                      _IS_DEAD).limit(1)
COUNT_DEAD = select(func.count()).where(TrialRow.study_id == bindparam("sid"), TrialRow.state == RUNNING, _IS_DEAD)


def new_owner() -> str:
    """A token for the run that starts or claims a trial (its writes check it), marking a job that keeps a deadline."""
    return DEADLINE_OWNER + uuid.uuid4().hex


def holder_grace(heartbeat: datetime | None, deadline: datetime | None) -> float | None:
    """The grace period of the job holding a trial, from its heartbeat and the deadline that counts (``DEADLINE``);
    None without one."""
    return (deadline - heartbeat).total_seconds() if heartbeat is not None and deadline is not None else None


def is_dead(heartbeat: datetime | None, deadline: datetime | None, *, now: datetime, grace: float) -> bool:
    """The rule above for a trial already read (``deadline``: the one that counts, ``DEADLINE``): ``grace`` is the
    looking job's, used when there is none."""
    if deadline is not None:
        return deadline < now
    return heartbeat is None or heartbeat < now - timedelta(seconds=grace)


def deadline(now: datetime, grace: float | None) -> datetime | None:
    """A holder's deadline: ``now`` plus its grace period (None: no deadline, the looking job's grace decides)."""
    return now + timedelta(seconds=grace) if grace is not None else None


def beat(tx: Executor, trial_id: int, owner: str, now: datetime, grace: float | None) -> bool:
    """False when ``owner`` no longer holds the trial. ``grace``: the holding job's grace period, which moves the
    deadline (None: no deadline, the looking jobs' grace periods decide)."""
    return bool(tx.run(_BEAT, {"tid": trial_id, "me": owner, "heartbeat": now, "deadline": deadline(now, grace)}))


def release(tx: Executor, trial_id: int, owner: str) -> None:
    tx.run(_RELEASE, {"tid": trial_id, "me": owner, "heartbeat": None, "deadline": None})


def any_dead(tx: Executor, *, study_id: int, now: datetime, grace: float) -> bool:
    """Whether the study has a dead trial (a read: the claim that follows re-checks under the lock)."""
    return tx.first(_ANY_DEAD, {"sid": study_id, "now": now, "cutoff": now - timedelta(seconds=grace)}) is not None


def claim_dead(tx: Executor, *, study_id: int, now: datetime, grace: float, rank: int, device: str,
               owner: str) -> int | None:
    """The id of the dead trial this transaction took over for ``owner`` (see Store.claim_dead), or None.
    ``grace``: the claiming job's, which judges trials without a deadline and sets the claimed one's."""
    found = tx.first(_DEAD, {"sid": study_id, "now": now, "cutoff": now - timedelta(seconds=grace)})
    if found is None:
        return None
    # a stale heartbeat: the run died holding it (a released trial, or one of an older release, has none)
    crashes = (found[2] or 0) + (found[1] is not None)
    tx.run(_UPDATE_TRIAL, {"tid": found[0], "heartbeat": now, "deadline": deadline(now, grace), "rank": rank,
                           "device": device, "owner": owner, "crashes": crashes})
    return found[0]
