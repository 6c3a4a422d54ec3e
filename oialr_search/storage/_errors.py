"""The storage's errors a user can fix (one line, exit code 2 through the CLI)."""

from __future__ import annotations

from ..exceptions import OIALRSearchError


class StorageError(OIALRSearchError):
    """The storage URL is invalid or the database cannot be opened."""


class StudyNotFound(OIALRSearchError):
    """No study of that name in the storage."""


def unknown_database(url: str, drivername: str) -> StorageError:
    """The error for a URL whose database kind or driver SQLAlchemy does not know (``foo://``)."""
    return StorageError(f"--storage {url}: unknown kind of database or driver {drivername!r} (use sqlite:///FILE, "
                        "or postgresql://USER@HOST/DB with the driver: pip install 'oialr-search[postgres]')")
