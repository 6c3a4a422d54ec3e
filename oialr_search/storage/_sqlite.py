"""The SQLite engine of the store: WAL, a busy timeout, BEGIN IMMEDIATE for writes and a plain BEGIN
for reads, so concurrent ranks queue for the write lock instead of failing on a read→write upgrade
and queries never block them."""

from __future__ import annotations

import random
import sqlite3
import time
from collections.abc import Callable

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Engine

BUSY_TIMEOUT_MS = 60_000
_READ_ONLY = "oialr_read_only"  # execution option: the session only reads (plain BEGIN, no write lock)


def _begin_immediate(dbapi_conn: sqlite3.Connection) -> None:
    """BEGIN IMMEDIATE, retried with sub-millisecond jittered sleeps while another writer holds the lock.

    SQLite's own busy handler backs off to 10–100 ms sleeps although our write transactions hold the
    lock for 1–2 ms; with 8 ranks that made every trial wait tens of milliseconds. With BEGIN
    IMMEDIATE only the BEGIN can wait, so retrying it here is all that is needed.
    """
    dbapi_conn.execute("PRAGMA busy_timeout=0")
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    delay = 0.0002
    try:
        while True:
            try:
                dbapi_conn.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) and "busy" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 1.5, 0.002)
    finally:
        dbapi_conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")


def _retry_locked(statement: Callable[[], object]) -> None:
    """Run a statement that SQLite's busy handler does not cover (switching a brand-new file to WAL
    while another process creates it answers "database is locked" at once), retrying briefly."""
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            statement()
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) and "busy" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.01 * (0.5 + random.random()))


def _sqlite_engine(url: str, *, read_only: bool = False) -> Engine:
    """SQLite with WAL, a busy timeout and BEGIN IMMEDIATE for writes, so concurrent ranks queue
    for the lock instead of failing with "database is locked" on a read→write upgrade."""
    engine = create_engine(url, connect_args={"timeout": BUSY_TIMEOUT_MS / 1000})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record):  # noqa: ANN001
        dbapi_conn.isolation_level = None  # we emit BEGIN ourselves
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        if not read_only:  # a read-only connection cannot change the journal mode (ours are WAL already)
            _retry_locked(lambda: cur.execute("PRAGMA journal_mode=WAL"))
            cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn):  # noqa: ANN001
        if conn.get_execution_options().get(_READ_ONLY):
            conn.connection.driver_connection.execute("BEGIN")  # a reader never waits for, or blocks, a writer
        else:
            _begin_immediate(conn.connection.driver_connection)

    return engine
