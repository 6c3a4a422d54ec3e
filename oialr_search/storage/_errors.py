"""The storage's errors a user can fix (one line, exit code 2 through the CLI)."""

from __future__ import annotations

import os
import sqlite3

from ..exceptions import OIALRSearchError


class StorageError(OIALRSearchError):
    """The storage URL is invalid or the database cannot be opened."""


class StudyNotFound(OIALRSearchError):
    """No study of that name in the storage."""


class ConnectFailed(RuntimeError):
    """A connection to the database could not be made (for a write or a read of a running search): it says
    nothing about what was to be written, so it passes (see ``transient``) — the trial is left to be resumed,
    never stored FAILED for it."""


def unknown_database(url: str, drivername: str) -> StorageError:
    """The error for a URL whose database kind or driver SQLAlchemy does not know (``foo://``)."""
    return StorageError(f"--storage {url}: unknown kind of database or driver {drivername!r} (use sqlite:///FILE, "
                        "or postgresql://USER@HOST/DB with the driver: pip install 'oialr-search[postgres]')")


def storage_named(text: str, given: str | None) -> str:
    """``text``, an error about the storage, naming it as the user gave it: ``given`` (``--storage``'s value),
    or when that is None and the URL came from ``OIALR_SEARCH_STORAGE``, the variable instead of an option the
    user never typed."""
    url = os.environ.get("OIALR_SEARCH_STORAGE")
    if given is not None or not url:
        return text
    for shown in (f"--storage {url!r}", f"--storage {url}"):  # the subject only: a command the text suggests
        if text.startswith(shown):                            # keeps its --storage, which works as it is
            return f"OIALR_SEARCH_STORAGE={shown.removeprefix('--storage ')}{text[len(shown):]}"
    return text


# SQLite's result codes for a lock another connection holds (the extended codes share the low byte)
_SQLITE_BUSY, _SQLITE_LOCKED = 5, 6
# ... and for a database that no retry will open: read-only, damaged, full, not a database
_SQLITE_LASTING = (8, 11, 13, 26)
# PostgreSQL's SQLSTATE classes that pass: connection exceptions, rollbacks (serialization failure, deadlock),
# insufficient resources but a full disk, operator intervention (a server restart); and lock_not_available
_PASSING_SQLSTATES = ("08", "40", "53", "57")


def transient(exc: BaseException | None) -> bool:
    """Whether a storage error may pass (a busy or locked database, a lost connection, a server restarting)
    rather than repeat: not a missing table, a full or read-only disk, or a damaged file, which a retry
    would meet again."""
    seen: set[int] = set()
    connecting = False  # no connection could be made (ConnectFailed): passes unless SQLite said why it never will
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if getattr(exc, "connection_invalidated", False):  # SQLAlchemy: the connection was lost
            return True
        connecting = connecting or isinstance(exc, ConnectFailed)
        if isinstance(exc, sqlite3.Error) and connecting:  # a full disk, a read-only or damaged file do not pass
            code = getattr(exc, "sqlite_errorcode", None)
            return code is None or code & 0xFF not in _SQLITE_LASTING
        if isinstance(exc, sqlite3.OperationalError):
            code = getattr(exc, "sqlite_errorcode", None)
            if code is not None:
                return code & 0xFF in (_SQLITE_BUSY, _SQLITE_LOCKED)
            return any(m in str(exc) for m in ("database is locked", "database is busy", "table is locked"))
        if hasattr(exc, "pgcode") or hasattr(exc, "sqlstate"):  # a psycopg2 (.pgcode) or psycopg 3 (.sqlstate) error
            code = getattr(exc, "pgcode", None) or getattr(exc, "sqlstate", None)
            if code is None:  # no answer from the server (refused, dropped), unless the client itself refused
                return type(exc).__name__ in ("OperationalError", "InterfaceError")
            return (code[:2] in _PASSING_SQLSTATES and code != "53100") or code == "55P03"  # 53100: disk full
        exc = exc.__cause__ or exc.__context__
    return connecting
