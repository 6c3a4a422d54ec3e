"""Schema versions and their migrations (Alembic; the script directory is ``_migrations/``).

The Alembic revision id of schema version N is ``"vN"``. Its version table is ``oialr_alembic_version``,
not Alembic's default ``alembic_version``, which Optuna's RDB storage uses in a database we may share.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Connection, Engine, create_engine, func, insert, inspect, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import (
    ArgumentError,
    DBAPIError,
    IntegrityError,
    NoSuchModuleError,
    OperationalError,
    ProgrammingError,
)

from ..exceptions import OIALRSearchError
from ._errors import StorageError, unknown_database
from ._filesystems import sqlite_file
from ._schema import RUNNING, SCHEMA_VERSION, Base, EpochRow, MetaRow, StudyRow, TrialRow
from ._sqlite import read_only_engine, storage_failure

if TYPE_CHECKING:
    from alembic.config import Config

VERSION_TABLE = "oialr_alembic_version"
MIGRATIONS = Path(__file__).with_name("_migrations")
_MIGRATING = threading.Lock()


class SchemaOutdated(OIALRSearchError):
    """The database was made by an older release; the message says the command that upgrades it."""


class TrialsRunning(SchemaOutdated):
    """The older database has RUNNING trials: a job of the older release may still be writing to it, and
    would fail once its tables are rebuilt. The message says how to upgrade anyway (``--force``)."""


class SchemaTooNew(OIALRSearchError):
    """The database was upgraded by a newer release of oialr-search than this one."""


def _reading(engine: Engine) -> Engine:
    """``engine`` for a read transaction: the Store's SQLite engine then emits a plain (deferred) BEGIN, not
    BEGIN IMMEDIATE, so a schema check neither waits for nor blocks a writer. Other engines ignore it."""
    from ._sqlite import _READ_ONLY

    return engine.execution_options(**{_READ_ONLY: True})


def _config(conn: Connection) -> Config:
    from alembic.config import Config  # here: alembic is needed only to make or upgrade a schema

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS).replace("%", "%%"))  # configparser syntax
    config.attributes["connection"] = conn  # env.py migrates through it, inside our transaction
    return config


def _version(conn: Connection) -> int | None:
    tables = set(inspect(conn).get_table_names())
    if not any(t.startswith("oialr_") for t in tables - {VERSION_TABLE}):
        return None
    if VERSION_TABLE in tables:
        revision = conn.scalar(text(f"SELECT version_num FROM {VERSION_TABLE}"))
        if revision is not None:
            match = re.fullmatch(r"v(\d+)", revision)
            if match is None:
                raise SchemaTooNew(f"unknown schema revision {revision!r} in {VERSION_TABLE} (written by another "
                                   "release of oialr-search); upgrade oialr-search")
            return int(match[1])
    if "oialr_meta" in tables:  # made before the migrations existed (v1) or not stamped
        value = conn.scalar(select(MetaRow.value).where(MetaRow.key == "schema_version"))
        if value is not None:
            if not str(value).strip().isdigit():  # not ours to interpret: refuse it like a newer release's
                raise SchemaTooNew(f"unknown schema version {value!r} in oialr_meta (written by another release of "
                                   "oialr-search); upgrade oialr-search")
            return int(value)
    return 1


def schema_version(engine: Engine | Connection) -> int | None:
    """The schema version of the database: None when it has no oialr-search tables (empty, or only
    another program's tables, e.g. Optuna's); else the stamped Alembic revision, or the ``oialr_meta``
    row ``schema_version`` of a database from before the migrations existed (1 when that is missing)."""
    if isinstance(engine, Connection):
        return _version(engine)
    with _reading(engine).connect() as conn:
        return _version(conn)


def _running(conn: Connection) -> int:
    """How many trials are RUNNING (0 when there is no trial table)."""
    if not inspect(conn).has_table(TrialRow.__tablename__):
        return 0
    return conn.scalar(select(func.count()).select_from(TrialRow.__table__).where(TrialRow.state == RUNNING))


def _refuse_running(conn: Connection, url: str, version: int) -> None:
    """Raise :class:`TrialsRunning` when the older database at ``url`` has RUNNING trials."""
    running = _running(conn)
    if running:
        raise TrialsRunning(f"{url}: {running} trial(s) are RUNNING under the older release's schema v{version}; "
                            "stop that job first (or, if it died, upgrade anyway with: oialr-search storage upgrade "
                            f"--force --storage {shlex.quote(url)})")


def _outdated(url: str, version: int) -> SchemaOutdated:
    return SchemaOutdated(f"{url}: database schema v{version} is older than this release's v{SCHEMA_VERSION}; "
                          f"upgrade it with: oialr-search storage upgrade --storage {shlex.quote(url)}")


def _too_new(url: str, version: int) -> SchemaTooNew:
    return SchemaTooNew(f"{url}: database schema v{version} is newer than this release's v{SCHEMA_VERSION}; "
                        "upgrade oialr-search (pip install -U oialr-search)")


def _create_or_upgrade(conn: Connection, *, url: str, force: bool) -> None:
    from alembic import command
    from alembic.runtime.migration import MigrationContext

    version = _version(conn)  # again, inside this transaction: another process may have been first
    if version is None:
        Base.metadata.create_all(conn)
        conn.execute(insert(MetaRow).values(key="schema_version", value=str(SCHEMA_VERSION)))
        command.stamp(_config(conn), "head")
    elif version < SCHEMA_VERSION:
        if not force:  # again too: the write lock now keeps an older job from starting another trial
            _refuse_running(conn, url, version)
        config = _config(conn)
        if MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE}).get_current_revision() is None:
            command.stamp(config, f"v{version}")  # made before the migrations existed: start from its version
        violations = _foreign_key_violations(conn)
        command.upgrade(config, "head")
        if _foreign_key_violations(conn) - violations:  # enforcement was off: raising rolls back
            raise OIALRSearchError(f"upgrading the schema to v{SCHEMA_VERSION} would break foreign keys")


def _foreign_key_violations(conn: Connection) -> set[tuple]:
    if conn.dialect.name != "sqlite":
        return set()
    return {tuple(row) for row in conn.exec_driver_sql("PRAGMA foreign_key_check")}


@contextlib.contextmanager
def _sqlite_foreign_keys_off(conn: Connection) -> Iterator[None]:
    """SQLite: no foreign key enforcement while ``conn`` migrates. A migration that recreates a table
    (copy, DROP, rename: how SQLite changes a column) would otherwise cascade-delete every row that
    references it. Set outside the transaction (inside one the pragma does nothing), so through the
    driver's connection: a statement through ``conn`` would BEGIN first."""
    if conn.dialect.name != "sqlite":
        yield
        return
    driver = conn.connection.driver_connection
    enforced = driver.execute("PRAGMA foreign_keys").fetchone()[0]
    if enforced:
        driver.execute("PRAGMA foreign_keys=OFF")
    try:
        yield
    finally:
        if enforced:  # the pooled connection goes back as it came (the Store's enforce foreign keys)
            driver.execute("PRAGMA foreign_keys=ON")
            if not driver.execute("PRAGMA foreign_keys").fetchone()[0]:  # still in a transaction
                conn.invalidate()


def _lost_race(exc: Exception) -> bool:
    """Whether ``exc`` is what a process gets when another one created or upgraded the schema first."""
    message = str(exc).lower()
    return isinstance(exc, IntegrityError) or "already exists" in message or "duplicate column" in message


def prepare_schema(engine: Engine, *, url: str, create: bool, force: bool = False) -> int | None:
    """Make the database usable by this release; returns its schema version then (None: no oialr-search
    tables, left so without ``create``). ``url`` is only for messages.

    Empty database: with ``create``, make the current schema and stamp it, else leave it alone. At the
    current version: nothing (one read transaction, two small queries; on the Store's SQLite engine a
    plain BEGIN, so opening a store never waits for the write lock). Older: with ``create``, upgrade it
    (silently), else raise :class:`SchemaOutdated` naming the command that upgrades it; but while it has
    RUNNING trials (a job of the older release may be using it) raise :class:`TrialsRunning` instead,
    unless ``force``. Newer: raise :class:`SchemaTooNew`. Safe when processes race: the change checks
    again in its own transaction (which the Store's SQLite engine makes exclusive), and a process that
    lost the race checks once more.
    """
    version = schema_version(engine)
    if version == SCHEMA_VERSION or version is None and not create:
        return version
    if version is not None and version > SCHEMA_VERSION:
        raise _too_new(url, version)
    if not create:
        raise _outdated(url, version)
    if version is not None and not force:  # refused without the write lock (checked again under it)
        with _reading(engine).connect() as conn:
            _refuse_running(conn, url, version)
    # Alembic's `context` and `op` are module-wide proxies: one migration at a time in this process. The
    # lock is taken before the transaction, so no thread holds database locks while it waits for it.
    with _MIGRATING:
        for attempt in range(2):
            try:
                with engine.connect() as conn, _sqlite_foreign_keys_off(conn), conn.begin():
                    _create_or_upgrade(conn, url=url, force=force)
                return SCHEMA_VERSION
            except (IntegrityError, OperationalError, ProgrammingError) as exc:
                if attempt or not _lost_race(exc):
                    raise


def _open(url: str, *, write: bool = False) -> Engine:
    """An engine on an existing database: a missing SQLite file is an error, never created. Only a ``write``
    engine changes a SQLite file: it is the Store's, which switches the file to WAL and whose BEGIN makes
    the DDL transactional (pysqlite's own BEGIN does not)."""
    from ._sqlite import _sqlite_engine

    try:
        parsed = make_url(url)
        sqlite = parsed.get_backend_name() == "sqlite"
        if sqlite and parsed.database not in (None, "", ":memory:") and not Path(parsed.database).is_file():
            raise StorageError(f"--storage {url}: no such database file")
        if sqlite and write:
            return _sqlite_engine(url)
        db = sqlite_file(url)
        if db is not None and not (os.access(db, os.W_OK) and os.access(db.parent, os.W_OK)):
            # a file we may not write (a read-only file or mount, chattr +i): read it as queries do (immutable
            # while no -wal says a writer has it open), leaving no -wal/-shm files beside it; a writable one may
            # have a writer, whom only a plain connection sees consistently (it removes its files when it closes)
            return read_only_engine(db)
        return create_engine(url)
    except NoSuchModuleError:  # an ArgumentError: a URL of a kind or driver SQLAlchemy does not know
        raise unknown_database(url, make_url(url).drivername) from None
    except ArgumentError:
        raise StorageError(f"--storage {url!r}: not a database URL (e.g. sqlite:///search.db)") from None
    except ImportError as exc:  # the URL's driver is not installed
        raise StorageError(f"--storage {url}: cannot open ({exc.__class__.__name__}: {exc})") from None


def upgrade(url: str, *, force: bool = False) -> tuple[int, int]:
    """Upgrade the database at ``url`` to this release's schema, keeping every row; returns the schema
    versions (before, after), equal when it was up to date. Raises :class:`StorageError` when there is
    no such database or no oialr-search tables in it, :class:`SchemaTooNew` when it is newer, and
    :class:`TrialsRunning` when it has RUNNING trials (a job of the older release may be using it),
    unless ``force`` (their job died: the next search of their study resumes them)."""

    engine = _open(url)
    try:
        version = schema_version(engine)  # read first: a database that is not ours stays untouched
        if version is None:
            raise StorageError(f"--storage {url}: no oialr-search tables in this database, nothing to upgrade")
        if version > SCHEMA_VERSION:
            raise _too_new(url, version)
        if version < SCHEMA_VERSION:
            if not force:  # before the writer opens: a refused SQLite file is not even switched to WAL
                with engine.connect() as conn:
                    _refuse_running(conn, url, version)
            writer = _open(url, write=True)
            try:
                prepare_schema(writer, url=url, create=True, force=force)  # checks again inside its transaction
            finally:
                writer.dispose()
        return version, SCHEMA_VERSION
    except (DBAPIError, sqlite3.Error) as exc:  # DBAPIError: OperationalError, and DatabaseError (not a database)
        failure = storage_failure(exc, sqlite_file(url))
        raise StorageError(f"--storage {url}: " + (failure or f"cannot open ({exc.__class__.__name__}: "
                                                              f"{str(exc).splitlines()[0]})")) from None
    finally:
        engine.dispose()


def refuse_running_before_upgrade(url: str) -> None:
    """Raise :class:`TrialsRunning` when the existing SQLite database at ``url`` has an older schema and
    RUNNING trials, found read-only: a writer that would upgrade it refuses before it opens the file, which
    would switch it to WAL (a refused ``run`` must leave it as it was, as ``storage upgrade`` does). Any
    other fault is left to the writer's own open, which says what is wrong."""
    engine = _open(url)
    try:
        version = schema_version(engine)
        if version is not None and version < SCHEMA_VERSION:
            with engine.connect() as conn:
                _refuse_running(conn, url, version)
    except (DBAPIError, sqlite3.Error):
        return
    finally:
        engine.dispose()


def row_counts(url: str) -> dict[str, int]:
    """The rows of an existing database: ``{"studies": n, "trials": n, "epochs": n, "running": n}``
    (``running``: the trials among them that are RUNNING)."""
    engine = _open(url)
    try:
        with engine.connect() as conn:
            counts = {name: conn.scalar(select(func.count()).select_from(row.__table__))
                      for name, row in (("studies", StudyRow), ("trials", TrialRow), ("epochs", EpochRow))}
            return {**counts, "running": _running(conn)}
    finally:
        engine.dispose()
