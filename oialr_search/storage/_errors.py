"""The storage's errors a user can fix (one line, exit code 2 through the CLI)."""

from __future__ import annotations

from ..exceptions import OIALRSearchError


class StorageError(OIALRSearchError):
    """The storage URL is invalid or the database cannot be opened."""


class StudyNotFound(OIALRSearchError):
    """No study of that name in the storage."""
