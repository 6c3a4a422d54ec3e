"""What a SQLite path must be before SQLite opens it: a file (not a folder) in a folder that exists,
writable by a writer, looked at without an OSError. Refused with a one-line StorageError."""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from pathlib import Path

from sqlalchemy.engine import make_url

from ._errors import StorageError


def check_sqlite_path(url: str, db: Path) -> None:
    if db.is_dir():
        raise StorageError(f"--storage {url}: {db} is a folder; give a database file in it, e.g. "
                           f"sqlite:///{db / 'oialr_search.db'}")
    if not db.parent.exists():
        raise StorageError(f"--storage {url}: folder {db.parent} does not exist")


@contextlib.contextmanager
def path_errors(url: str, db: Path) -> Iterator[None]:
    """An OSError while looking at the path (a folder that may not be searched, a name too long) becomes
    the one-line StorageError."""
    try:
        yield
    except OSError as exc:
        raise StorageError(f"--storage {url}: {db}: {exc.strerror or exc}") from None


def check_writer_storage(url: str) -> None:
    """What a writing Store refuses about a SQLite path before it opens (or creates) anything, checked
    alone: StorageError for a folder given as the file, a missing folder, a read-only file or folder.
    Nothing for other databases; a malformed URL raises sqlalchemy's ArgumentError. An in-memory SQLite
    database is refused: each process would have its own, and the search would be lost when it ends."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database in (None, "", ":memory:"):
        raise StorageError(f"--storage {url}: an in-memory database would be lost when the search ends (and no "
                           "other rank could see it); give a file, e.g. sqlite:///search.db")
    if parsed.get_backend_name() == "sqlite":
        db = Path(parsed.database)
        with path_errors(url, db):
            check_sqlite_path(url, db)
            check_writable_file(url, db)


def check_writable_file(url: str, db: Path) -> None:
    """A writer's SQLite file and folder must be writable: refused here, before SQLite opens it, because a
    read-only connection would leave -wal and -shm files behind (it may not delete them on close). access(2)
    sees read-only mounts and immutable files even for root; the no-op write of ``check_writable`` catches
    what it cannot (a server that refuses writes it allowed, a ``mode=ro`` URI)."""
    if db.exists() and not os.access(db, os.W_OK):
        raise StorageError(f"--storage {url}: the database is read-only: {db} cannot be written (its stored trials "
                           "are intact); make it writable, or copy it to a writable place and give that path")
    side = [db.with_name(db.name + suffix) for suffix in ("-wal", "-shm")]
    if os.access(db.parent, os.W_OK) or db.exists() and all(p.exists() and os.access(p, os.W_OK) for p in side):
        return
    if not db.exists():
        raise StorageError(f"--storage {url}: folder {db.parent} is read-only: cannot create {db.name} there; give a "
                           "path in a writable folder")
    raise StorageError(f"--storage {url}: folder {db.parent} is read-only, and SQLite needs to create {side[0].name} "
                       f"and {side[1].name} there (the stored trials are intact); make the folder writable, or copy "
                       "the database to a writable place and give that path")


_STUDY_FILES = ((re.compile(r"trial_[0-9]+\.pt"), "weights", "kept weights (the only copy of a trained model)"),
                (re.compile(r"trial_[0-9]+\.ckpt"), "trials", "running trial's checkpoint"))


def a_studys_file(path: str | os.PathLike) -> str | None:
    """What ``path`` is when it is named as a study keeps its files, in any work folder (``…/weights/
    trial_<n>.pt``, ``…/trials/trial_<n>.ckpt``), or is a SQLite database or one of its journals, else None:
    an output must never replace one, whichever database or folder its study is in (a sweep overwrote
    another database's kept weights with an export)."""
    real = Path(os.path.realpath(path))
    for pattern, folder, what in _STUDY_FILES:
        if real.parent.name == folder and pattern.fullmatch(real.name):
            return f"is named as a study's {what}"
    for suffix in ("-wal", "-shm", "-journal", ""):  # a database (train --weights replaced one: a review)
        if real.name.endswith(suffix) and _sqlite_database(real.with_name(real.name[:len(real.name) - len(suffix)])):
            return "is a SQLite database" + (f"'s {suffix[1:]} file" if suffix else "")
    return None


def _sqlite_database(path: Path) -> bool:
    try:
        if not path.is_file():  # (opening a FIFO to look would wait for a writer)
            return False
        with open(path, "rb") as fh:
            return fh.read(16) == b"SQLite format 3\x00"
    except OSError:
        return False


def recorded_workdir(space: dict) -> str | None:
    """The ``--workdir`` (absolute) a study's jobs were last run with, which its stored space keeps so that
    ``resume`` and ``export`` without ``--workdir`` find its trial checkpoints and kept weights; None
    when none was given (the default folder) or the study is from a release that did not record it."""
    value = space.get("workdir")
    return value if isinstance(value, str) and value else None


def study_work_folder(storage: str, study: str, workdir: str | os.PathLike | None = None) -> Path:
    """A study's work folder, shared by its jobs: ``workdir/<study>`` (``--workdir``), else next to a SQLite
    file (``<db>.work/<study>``), else ``oialr_search_work/<study>`` in the working directory. (Here, not in
    the search package, so that ``export`` finds the kept weights without importing torch.)"""
    if workdir is not None:
        return Path(workdir) / study
    url = make_url(storage)
    if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
        db = Path(url.database)
        return db.with_name(f"{db.stem}.work") / study
    return Path("oialr_search_work") / study
