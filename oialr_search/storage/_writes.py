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
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Any, Protocol

from sqlalchemy import bindparam, func, insert, select, update
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.sql import Executable

from ._schema import INTERRUPTED, RUNNING, EpochRow, TrialPayloadRow, TrialRow
from ._sqlite import _begin_immediate

EPOCH_FIELDS = ("epoch", "step", "train_loss", "val_loss", "top1", "top5", "lr", "trainable_fraction", "seconds",
                "compression", "train_seconds")

# The statements, built once. Values come as bound parameters, so both executors can cache them.
_TAKEN = select(func.count()).where(TrialRow.study_id == bindparam("sid"), TrialRow.state != INTERRUPTED)
_NEXT_NUMBER = select(func.coalesce(func.max(TrialRow.number), -1) + 1).where(TrialRow.study_id == bindparam("sid"))
_INSERT_TRIAL = insert(TrialRow)
_INSERT_PAYLOAD = insert(TrialPayloadRow)
_INSERT_EPOCH = insert(EpochRow)
_TRIAL_CLOCK = select(TrialRow.started, TrialRow.last_epoch).where(TrialRow.id == bindparam("tid"))
_UPDATE_TRIAL = update(TrialRow).where(TrialRow.id == bindparam("tid"))
_UPDATE_PAYLOAD = update(TrialPayloadRow).where(TrialPayloadRow.trial_id == bindparam("tid"))


def now() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


def epoch_row(trial_id: int, record: dict) -> dict:
    """An epoch row; NaN and inf become NULL (what SQLite would make of a NaN anyway)."""
    def clean(v: object) -> object:
        return None if isinstance(v, float) and not math.isfinite(v) else v

    return {"trial_id": trial_id, **{k: clean(record.get(k)) for k in EPOCH_FIELDS}}


class Executor(Protocol):
    """What the write functions below need from a transaction."""

    def one(self, stmt: Executable, params: dict) -> tuple: ...
    def run(self, stmt: Executable, params: dict) -> int | None: ...  # returns the inserted primary key
    def many(self, stmt: Executable, rows: list[dict]) -> None: ...


# -- the writes, once ---------------------------------------------------------------------------------

def start_trial(tx: Executor, *, study_id: int, row: dict, config: dict | None,
                limit: int | None) -> tuple[int, int] | None:
    """Insert a RUNNING trial with the next number; (id, number), or None once ``limit`` trials exist."""
    if limit is not None and tx.one(_TAKEN, {"sid": study_id})[0] >= limit:
        return None
    number = tx.one(_NEXT_NUMBER, {"sid": study_id})[0]
    trial_id = tx.run(_INSERT_TRIAL, {**row, "study_id": study_id, "number": number, "state": RUNNING})
    tx.run(_INSERT_PAYLOAD, {"trial_id": trial_id, "config": config})
    return trial_id, number


def report_epochs(tx: Executor, trial_id: int, records: list[dict]) -> None:
    tx.many(_INSERT_EPOCH, [epoch_row(trial_id, r) for r in records])
    tx.run(_UPDATE_TRIAL, {"tid": trial_id, "last_epoch": records[-1]["epoch"]})


def finish_trial(tx: Executor, trial_id: int, *, fields: dict, epochs: list[dict] | None,
                 rank_trajectory: list | None) -> None:
    """Store the outcome ``fields``; of ``epochs`` only those after the last reported one are added."""
    started, reported = tx.one(_TRIAL_CLOCK, {"tid": trial_id})
    new = [e for e in epochs or [] if e["epoch"] > (reported or 0)]
    if new:
        tx.many(_INSERT_EPOCH, [epoch_row(trial_id, e) for e in new])
    finished = now()
    tx.run(_UPDATE_TRIAL, {"tid": trial_id, **fields, "finished": finished,
                           "duration": (finished - started).total_seconds(),
                           "last_epoch": new[-1]["epoch"] if new else reported})
    if rank_trajectory is not None:
        tx.run(_UPDATE_PAYLOAD, {"tid": trial_id, "rank_trajectory": rank_trajectory})


# -- the executors ------------------------------------------------------------------------------------

class CoreExecutor:
    """SQLAlchemy Core on one connection in a transaction: any database."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def one(self, stmt: Executable, params: dict) -> tuple:
        return tuple(self.conn.execute(stmt, params).one())

    def run(self, stmt: Executable, params: dict) -> int | None:
        result = self.conn.execute(stmt, params)
        return result.inserted_primary_key[0] if result.is_insert else None

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
        c = self._compiled(stmt, tuple(params))
        return c.row(self.conn.execute(c.sql, c.args(params)).fetchone())

    def run(self, stmt: Executable, params: dict) -> int | None:
        c = self._compiled(stmt, tuple(params))
        return self.conn.execute(c.sql, c.args(params)).lastrowid

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

    @contextmanager
    def write(self) -> Iterator[Executor]:
        if not self.raw:
            try:
                with self.engine.begin() as conn:
                    yield CoreExecutor(conn)
            except SQLAlchemyError as exc:
                raise RuntimeError(f"storage {self.url}: transaction rolled back: {exc}") from exc
            return
        pooled = self.engine.raw_connection()  # connect events ran: WAL, busy timeout, foreign keys
        try:
            conn = pooled.driver_connection
            _begin_immediate(conn)
            try:
                yield SQLiteExecutor(conn, self._cache, self.engine.dialect)
                conn.execute("COMMIT")
            except BaseException as exc:
                if conn.in_transaction:  # some errors end the transaction themselves
                    conn.execute("ROLLBACK")
                if isinstance(exc, sqlite3.Error):
                    cause = IntegrityError(None, None, exc) if isinstance(exc, sqlite3.IntegrityError) else exc
                    raise RuntimeError(f"storage {self.url}: transaction rolled back: "
                                       f"({exc.__class__.__name__}) {exc}") from cause
                raise
        finally:
            pooled.close()
