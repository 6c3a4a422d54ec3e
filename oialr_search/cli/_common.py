"""Helpers shared by the CLI verbs."""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from sqlalchemy.exc import ArgumentError

from .._files import make_folder_for, write_file_atomic
from ..exceptions import OIALRSearchError
from ..storage import default_storage
from ..storage._filesystems import network_storage_warning, sqlite_file
from ..storage._paths import a_studys_file, study_work_folder
from ..storage._sqlite import storage_failure

# Where launchers put a process's rank before MPI starts: MPICH/Intel MPI (and srun with PMI), Open MPI,
# PMIx, SLURM.
_RANK_VARIABLES = ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK", "SLURM_PROCID")
_FORWARD_S = 0.5  # see end_mpi_job
_RANK_0_GRACE_S = 2.0  # on Ctrl-C, how long the other ranks leave rank 0 to report it and end the job


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically, creating its folder (``train --out runs/x/metrics.json``; a
    link's: that of the file it points to)."""
    make_folder_for(path)
    write_file_atomic(path, text)


def add_storage(p: argparse.ArgumentParser) -> None:
    p.add_argument("--storage", default=None,
                   help=f"SQLAlchemy URL (default: $OIALR_SEARCH_STORAGE or {default_storage()})")


def add_study(p: argparse.ArgumentParser) -> None:
    p.add_argument("--study", required=True, help="study name")
    add_storage(p)


def launcher_rank() -> int:
    """This process's rank as its launcher set it (0 without one): known before MPI starts, so one line that
    every rank would print is printed once."""
    for name in _RANK_VARIABLES:
        value = os.environ.get(name, "")
        if value.isdigit():
            return int(value)
    return 0


def parse_error_said_by_rank_0() -> bool:
    """Whether this process leaves its command-line error to rank 0: under a launcher, before MPI starts,
    every rank parses the same command line, so argparse's error is the same one on each (the other
    ranks exit 2 in silence). Errors about files, which ranks may see differently, are not left out so:
    see _search.before_search."""
    return _mpi_world() is None and launcher_rank() != 0


def warn_network_storage(command: str, storage: str | None) -> None:
    """Rank 0 of ``run``/``resume``: one warning line when the SQLite database is on a network filesystem."""
    if launcher_rank() != 0:
        return
    try:
        warning = network_storage_warning(storage or default_storage())
    except OSError:  # a path that cannot be looked at: the storage's own checks say what is wrong with it
        return
    if warning:
        print(f"oialr-search {command}: warning: {warning}", file=sys.stderr, flush=True)


def check_not_the_studys_files(outputs: dict[str, Path], args: argparse.Namespace, *,
                               recorded: str | None = None) -> None:
    """Refuse (one line, before anything is written) an output file that would replace the SQLite database
    (or its -wal/-shm/-journal) or lie in a work folder of its studies: next to the database
    (``<db>.work``, every study's), in ``--workdir``, or in the default ``oialr_search_work``, where
    the kept weights (the only copy of the trained models) and the trials' checkpoints are. ``outputs``: the
    files by option; ``recorded``: the ``--workdir`` the study recorded (known once it is read)."""
    storage = args.storage or default_storage()
    db = sqlite_file(storage)
    # SQLite names its -wal/-shm after the file a link points to
    database = {os.path.realpath(db) + suffix for suffix in ("", "-wal", "-shm", "-journal")} if db else set()
    try:
        folders = {study_work_folder(storage, args.study).parent, Path("oialr_search_work")}
    except ArgumentError:
        return  # a URL that does not parse: opening the store says so, in one line
    for workdir in (getattr(args, "workdir", None), recorded):
        if workdir is not None:
            folders.add(Path(workdir))  # every study's folder in it
    for option, path in outputs.items():
        real = os.path.realpath(path)
        if real in database:
            raise OIALRSearchError(f"{option} {path}: is the study's database ({storage}); give another file")
        for folder in folders:
            if Path(real).is_relative_to(os.path.realpath(folder)):
                raise OIALRSearchError(f"{option} {path}: is in the work folder {folder} (the studies' kept weights "
                                       "and checkpoints); write it elsewhere")
        what = a_studys_file(path)  # of a study of another database, in a folder of its own
        if what is not None:
            raise OIALRSearchError(f"{option} {path}: {what}; write it elsewhere")


def storage_failed(args: argparse.Namespace, exc: BaseException) -> str | None:
    """The one-line error for ``exc`` when it says that the SQLite database became unusable while the command
    ran (the disk filled up, the file or its mount turned read-only), else None. SQLite rolled the failed write
    back, so what was stored before is intact; a search is continued with ``resume``."""
    url = getattr(args, "storage", None) or default_storage()
    failure = storage_failure(exc, sqlite_file(url))
    if failure is None:
        return None
    message = f"--storage {url}: {failure}"
    if args.command in ("run", "resume"):
        message += (f", then continue with: oialr-search resume --study {shlex.quote(args.study)} --storage "
                    f"{shlex.quote(url)} (the trials stored so far are intact)")
    return message


def _mpi_world() -> Any:  # noqa: ANN401 - mpi4py's communicator, when MPI is running in this process
    mpi = sys.modules.get("mpi4py.MPI")  # never imported here: a command that did not start MPI has none
    if mpi is None or not mpi.Is_initialized() or mpi.Is_finalized():
        return None
    return mpi.COMM_WORLD


def mpi_rank() -> int:
    world = _mpi_world()
    return world.Get_rank() if world is not None else launcher_rank()


def interrupted() -> int:
    """Ctrl-C: one line, and under MPI the end of every rank; returns the exit code (130). The terminal sends
    SIGINT to every rank: rank 0 says so and ends the job, the others give it a moment first, so the line
    comes once; they end it themselves if rank 0 is stuck in a collective, where it never sees its SIGINT."""
    if mpi_rank() != 0:
        with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C again: stop waiting
            time.sleep(_RANK_0_GRACE_S)
    print("oialr-search: interrupted", file=sys.stderr, flush=True)
    end_mpi_job(130)
    return 130


def end_mpi_job(code: int) -> None:
    """Under MPI with several ranks, end every rank now with exit code ``code`` (MPI_Abort). A rank that
    stops on Ctrl-C or a storage failure must not leave the others waiting: one blocked in a collective
    never sees its own SIGINT, and this rank's MPI_Finalize would wait for it. ``python -m mpi4py`` does
    the same for any non-zero exit; this covers ranks launched without it."""
    world = _mpi_world()
    if world is None or world.Get_size() < 2:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    # mpiexec forwards a rank's output through pipes, and MPI_Abort kills the job at once: what it had not
    # read yet is lost (seen under load: the error line never reached the terminal). Give it a moment.
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C again: end now
        time.sleep(_FORWARD_S)
    world.Abort(code)
