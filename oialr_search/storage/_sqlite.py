"""The SQLite engine of the store: WAL, a busy timeout, BEGIN IMMEDIATE for writes and a plain BEGIN
for reads, so concurrent ranks queue for the write lock instead of failing on a read→write upgrade
and queries never block them. And what a failed SQLite call says about the file itself (full, read-only,
not a database), for the one-line errors of the CLI."""

from __future__ import annotations

import contextlib
import random
import sqlite3
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Engine
from sqlalchemy.pool import QueuePool

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


def read_only_engine(db: Path, *, immutable: bool | None = None) -> Engine:
    """An engine that reads the SQLite file ``db`` without changing anything. With no -wal file no
    connection has the database open (the last one to close removes it): read it as immutable, which
    creates no -wal/-shm files — a query leaves nothing behind, works in a folder it cannot write, and
    cannot leave files owned by another user that would block the search's own writes. Otherwise join the
    writers read-only. ``immutable`` overrides that choice.

    The SQLite URI goes to sqlite3 as it is: through a SQLAlchemy URL a ``#`` in the path came back
    decoded, which SQLite reads as the start of a fragment (the options were dropped and a truncated path
    opened, read-write: a review)."""
    if immutable is None:
        immutable = not db.with_name(db.name + "-wal").exists()
    uri = f"file:{urllib.parse.quote(str(db.resolve()))}?{'immutable=1' if immutable else 'mode=ro'}"
    return _sqlite_engine("sqlite://", read_only=True, creator=lambda: sqlite3.connect(
        uri, uri=True, timeout=BUSY_TIMEOUT_MS / 1000, check_same_thread=False))


def _sqlite_engine(url: str, *, read_only: bool = False, creator: Callable[[], sqlite3.Connection] | None = None
                   ) -> Engine:
    """SQLite with WAL, a busy timeout and BEGIN IMMEDIATE for writes, so concurrent ranks queue
    for the lock instead of failing with "database is locked" on a read→write upgrade. ``creator``: the
    connections' maker (``url`` is then "sqlite://"), pooled as a file database's are."""
    engine = create_engine(url, creator=creator, poolclass=QueuePool) if creator is not None else \
        create_engine(url, connect_args={"timeout": BUSY_TIMEOUT_MS / 1000})

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


def check_writable(engine: Engine) -> None:
    """Raise sqlite3's error when the database cannot be written (a read-only file, folder or mount, a
    ``mode=ro`` URI): a no-op write, rolled back, so nothing changes. Without it such a database would
    open fine and fail at the search's first write, after the study was set up. Never waits: while another
    connection holds the write lock the file is evidently writable, and opening a store must not queue
    behind a writer."""
    pooled = engine.raw_connection()  # connect events ran: WAL (a read-only folder may fail already there)
    try:
        conn = pooled.driver_connection
        conn.execute("PRAGMA busy_timeout=0")
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc) or "busy" in str(exc):
                return  # another writer has it
            raise
        try:
            version = int(conn.execute("PRAGMA user_version").fetchone()[0])
            conn.execute(f"PRAGMA user_version={version}")  # SQLite writes the header even when unchanged
        finally:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
    finally:
        with contextlib.suppress(sqlite3.Error):
            pooled.driver_connection.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        pooled.close()


# -- what a failed SQLite call says about the storage itself -------------------------------------------------------
def _file(path: Path | None) -> str:
    return str(path) if path is not None else "the database file"


def _folder(path: Path | None) -> str:
    return str(path.parent) if path is not None else "its folder"


# SQLite's primary result codes (the low byte of an extended code) that mean the database file or its disk is
# unusable, not that one statement was wrong: what is wrong, and how to fix it given the file (None: unknown).
_FAILURES: dict[int, tuple[str, Callable[[Path | None], str]]] = {
    13: ("the disk is full",  # SQLITE_FULL
         lambda p: "free space on that disk or move the database to one with room"),
    8: ("the database is read-only",  # SQLITE_READONLY, and its extended codes (a read-only folder or mount)
        lambda p: f"make {_file(p)} and its folder writable, or give a writable path"),
    14: ("cannot open the database file",  # SQLITE_CANTOPEN: often the -wal/-shm files cannot be created
         lambda p: f"check that {_folder(p)} exists and is writable (SQLite keeps its -wal and -shm files there)"),
    3: ("access denied",  # SQLITE_PERM
        lambda p: f"check the permissions of {_file(p)} and its folder"),
    10: ("disk I/O error",  # SQLITE_IOERR
         lambda p: f"check the disk of {_file(p)} (full, read-only or gone), or give another path"),
    26: ("not a database",  # SQLITE_NOTADB
         lambda p: "give another path"),
    11: ("damaged database",  # SQLITE_CORRUPT
         lambda p: "restore it from a backup, or give another path"),
}
# Python 3.10's sqlite3 errors carry no result code: recognise them by SQLite's message instead.
_MESSAGES = {"database or disk is full": 13, "readonly database": 8, "unable to open database file": 14,
             "access permission denied": 3, "disk i/o error": 10, "file is not a database": 26,
             "database disk image is malformed": 11}
_SHOWN = {26: "file is not a SQLite database"}  # SQLite's own words, where they do not say what the file is


def _sqlite_errors(exc: BaseException) -> list[sqlite3.Error]:
    """The sqlite3 errors in ``exc``'s chain: its causes and contexts, and what SQLAlchemy wrapped (``.orig``)."""
    found: list[sqlite3.Error] = []
    todo: list[BaseException | None] = [exc]
    seen: set[int] = set()
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, sqlite3.Error):
            found.append(e)
        orig = getattr(e, "orig", None)
        todo += [e.__context__, e.__cause__, orig if isinstance(orig, BaseException) else None]
    return found


def storage_failure(exc: BaseException, path: Path | None = None) -> str | None:
    """``what is wrong (SQLite's message); how to fix it`` when ``exc`` or an error in its chain says that the
    SQLite file or its disk is unusable (full, read-only, not a database, damaged), else None. ``path``: the
    database file, named in the fix."""
    for err in _sqlite_errors(exc):
        message = (str(err).splitlines() or [type(err).__name__])[0]
        code = getattr(err, "sqlite_errorcode", None)
        code = code & 0xFF if isinstance(code, int) else \
            next((c for text, c in _MESSAGES.items() if text in message.lower()), None)
        if code in _FAILURES:
            what, fix = _FAILURES[code]
            return f"{what} ({_SHOWN.get(code, message)}); {fix(path)}"
    return None
