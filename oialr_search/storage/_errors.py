"""The storage's errors a user can fix (one line, exit code 2 through the CLI)."""

from __future__ import annotations

import os
import sqlite3

from sqlalchemy.exc import OperationalError

from ..exceptions import OIALRSearchError


class StorageError(OIALRSearchError):
    """The storage URL is invalid or the database cannot be opened."""


class StudyNotFound(OIALRSearchError):
    """No study of that name in the storage."""


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


def transient(exc: BaseException | None) -> bool:
    """Whether a storage error may pass (a busy database, a lost connection) rather than repeat."""
    while exc is not None:
        if isinstance(exc, (sqlite3.OperationalError, OperationalError)):
            return True
        exc = exc.__cause__ or exc.__context__
    return False
