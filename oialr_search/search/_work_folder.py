"""A study's work folder: where its running trials keep their checkpoints, its Propulate jobs their
files and its completed trials their kept weights.

``--workdir DIR`` puts it at ``DIR/<study>``; the study records DIR (absolute, in its stored space), so
a later ``resume`` or ``export`` without ``--workdir`` finds the same folder, and a job given another
``--workdir`` moves the record there. A study run without it uses the default folder (next to a SQLite
file, else ``oialr_search_work``), which is never recorded: the database and its ``.work`` folder move
together.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

from ..exceptions import OIALRSearchError
from ..storage import Store, Study
from ..storage._filesystems import sqlite_file
from ..storage._paths import recorded_workdir, study_work_folder


def work_folder(storage: str, study: str, workdir: str | None) -> Path:
    """The study's work folder, shared by its jobs: ``workdir/<study>``, else next to a SQLite file
    (``<db>.work/<study>``), else ``oialr_search_work/<study>`` in the working directory. Multi-node
    jobs need it on a filesystem every node sees (trial checkpoints are resumed by other jobs)."""
    return study_work_folder(storage, study, workdir)


def trial_folder(storage: str, study: str, workdir: str | None, *, make: bool = True) -> Path:
    """Where the study's running trials keep their checkpoints (``trial_<number>.ckpt``), made unless not ``make``."""
    folder = work_folder(storage, study, workdir) / "trials"
    if make:
        folder.mkdir(parents=True, exist_ok=True)
    return folder


def propulate_folder(storage: str, study: str, workdir: str | None, comm) -> Path:  # noqa: ANN001
    """This job's own Propulate folder (jobs of one study may run at once; each rebuilds its islands
    from the database), removed when the job ends. Collective."""
    name = comm.bcast(f"job-{os.getpid()}-{uuid.uuid4().hex[:8]}" if comm.Get_rank() == 0 else None, root=0)
    return work_folder(storage, study, workdir) / "propulate" / name


def chosen_workdir(given: str | None, existing: Study | None) -> tuple[str | None, str | None]:
    """(the ``--workdir`` this job uses, the one the study recorded): the given one (absolute; the recorded
    one when both are the same folder, through a link or not), else the recorded one, else None (the
    default folder)."""
    recorded = recorded_workdir(existing.space) if existing is not None else None
    if given is None or recorded is not None and os.path.realpath(given) == os.path.realpath(recorded):
        return recorded, recorded
    return os.path.abspath(given), recorded


def peek_recorded_workdir(storage: str, study: str) -> str | None:
    """The ``--workdir`` a stored study recorded, read without opening the database for writing (a refused
    command must not, say, upgrade its schema first); None when there is no such study or it cannot be read."""
    db = sqlite_file(storage)
    if db is not None and not db.exists():
        return None
    try:
        store = Store(storage, create=False, read_only=True)
    except OIALRSearchError:
        return None
    try:
        found = store.find_study(study)
    except (OIALRSearchError, RuntimeError):
        return None
    finally:
        store.engine.dispose()
    return recorded_workdir(found.space) if found is not None else None


def moved_note(storage: str, study: str, workdir: str | None, recorded: str | None) -> str | None:
    """What a job that moves an existing study's work folder says, when the old folder is still there: its
    stopped trials' checkpoints and kept weights stay behind, unused."""
    old = work_folder(storage, study, recorded)
    if not old.is_dir():
        return None
    new = work_folder(storage, study, workdir)
    return (f"work folder: study {study!r} now uses {new} (--workdir), not {old}: what is there (stopped trials' "
            f"checkpoints, kept weights) is not used by this job or later ones; move it into {new} to keep it")
