"""Opening a database for the Store: the URL and the SQLite file checked, the engine made, the schema
prepared, and every way that can fail said in one line (a StorageError)."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

from sqlalchemy import create_engine
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError

from ._errors import StorageError, unknown_database
from ._migrate import prepare_schema, refuse_running_before_upgrade
from ._paths import check_sqlite_path, check_writable_file, path_errors
from ._sqlite import _sqlite_engine, check_writable, read_only_engine, storage_failure


def open_database(url: str, *, create: bool, read_only: bool) -> tuple[Engine, bool]:
    """(the engine, whether the database has oialr-search tables). ``create``: make the database (and
    upgrade an older schema) where needed; ``read_only``: open SQLite read-only. Raises StorageError."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise StorageError(f"--storage {url!r}: not a database URL (e.g. sqlite:///search.db)") from None
    sqlite = parsed.get_backend_name() == "sqlite"
    db: Path | None = None  # the SQLite file, named in the errors
    if sqlite and parsed.database not in (None, "", ":memory:"):
        db = Path(parsed.database)
        with path_errors(url, db):
            if not create and not db.exists():
                raise StorageError(f"--storage {url}: no such database file")
            check_sqlite_path(url, db)
        if not read_only:
            with path_errors(url, db):
                check_writable_file(url, db)
            if create and db.exists():  # before the writer's first connection switches the file to WAL
                refuse_running_before_upgrade(url)
    engine: Engine | None = None
    try:
        # READ COMMITTED on PostgreSQL whatever the server's default: start_trial's statements after the
        # study's row lock must see what the previous holder committed (see _writes.start_trial)
        server = {"isolation_level": "READ COMMITTED"} if parsed.get_backend_name() == "postgresql" else {}
        if not sqlite:
            engine = create_engine(url, pool_pre_ping=True, **server)
        else:
            engine = read_only_engine(db) if read_only and db is not None else _sqlite_engine(url, read_only=read_only)
        # without create, a database with no oialr-search tables (new, empty, another program's) holds no
        # study: the study lookups say so instead of failing on the missing tables
        has_tables = prepare_schema(engine, url=url, create=create and not read_only) is not None
        if sqlite and not read_only:  # refuse a read-only database now, not at the first trial's write
            check_writable(engine)
        return engine, has_tables
    except BaseException as exc:
        # a refused database (not one, newer, read-only, ...) keeps no connection open: a SQLite one would
        # keep its -wal and -shm files next to the file for as long as this process lives
        if engine is not None:
            with contextlib.suppress(Exception):
                engine.dispose()
        if isinstance(exc, NoSuchModuleError):  # create_engine: no dialect or driver of that name
            raise unknown_database(url, parsed.drivername) from None
        if not isinstance(exc, (DBAPIError, ImportError, sqlite3.Error)):  # sqlite3's own: raised in our BEGIN
            raise
        failure = storage_failure(exc, db)  # a full disk, a read-only file, not a database, ...
        if failure is not None:
            raise StorageError(f"--storage {url}: {failure}") from None
        hint = ""
        if isinstance(exc, ImportError) and (parsed.get_backend_name(), parsed.get_driver_name()) == \
                ("postgresql", "psycopg2"):  # the default driver of postgresql:// URLs: the extra's
            hint = "; install the driver with: pip install 'oialr-search[postgres]'"
        raise StorageError(f"--storage {url}: cannot open ({exc.__class__.__name__}: "
                           f"{str(exc).splitlines()[0]}){hint}") from None
