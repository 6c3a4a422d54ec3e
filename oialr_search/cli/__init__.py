"""The ``oialr-search`` command line.

Exit codes: 0 success, 2 bad input (one line that says what to fix; also a storage that is unusable: not a
database, from a newer release, read-only, or a disk that filled up during a search), 1 internal failure,
130 interrupted (Ctrl-C).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys

from ..exceptions import OIALRSearchError
from ..storage._errors import storage_named
from . import _query, _results, _search, _storage, _train
from ._common import end_mpi_job, interrupted, parse_error_said_by_rank_0, storage_failed, warn_network_storage


class _Parser(argparse.ArgumentParser):
    """argparse with its errors in one line, as every other bad input's (argparse prints the usage first); the
    verbs' parsers are of this class too."""

    def error(self, message: str):  # noqa: ANN201 - never returns
        said = parse_error_said_by_rank_0()
        self.exit(2, None if said else f"{self.prog}: error: {message} (see: {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="oialr-search", description="OIALR training and hyperparameter search.")
    sub = parser.add_subparsers(dest="command", required=True)
    _train.add_parser(sub)
    _search.add_parsers(sub)
    _query.add_parsers(sub)
    _results.add_parsers(sub)
    _storage.add_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command in ("run", "resume"):
            from ..search._preemption import early_signals_held

            with early_signals_held():
                warn_network_storage(args.command, args.storage)
                return args.func(args)
        return args.func(args)
    except OIALRSearchError as exc:
        if str(exc):  # (empty: said by rank 0 of the MPI job, see _search.before_search)
            print(f"oialr-search {args.command}: error: {storage_named(str(exc), getattr(args, 'storage', None))}",
                  file=sys.stderr)
        return 2
    except BrokenPipeError:
        # the reader went away (`| head`): it has what it wanted. Point stdout at /dev/null, so that flushing it at
        # exit fails no more, and end as a Unix tool killed by SIGPIPE does (git, grep: 128 + 13)
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        end_mpi_job(141)  # under MPI (a search's progress lines): the other ranks must not wait for this one
        return 141
    except KeyboardInterrupt:
        # Ctrl-C ends the whole search. Trials that were running stay RUNNING, with the epochs they reported,
        # for the next job of the study to resume; under MPI every rank ends with this one.
        return interrupted()
    except Exception as exc:
        message = storage_failed(args, exc)  # the disk filled up or turned read-only while it ran
        if message is None:
            raise
        message = storage_named(message, getattr(args, "storage", None))
        print(f"oialr-search {args.command}: error: {message}", file=sys.stderr, flush=True)
        end_mpi_job(2)
        return 2


def console() -> None:
    """The ``oialr-search`` command and ``python -m oialr_search``: ``main()``, then exit with its code. Preemption
    signals are ignored from then on: the process is ending anyway, and a search's rank dying of one while MPI
    finalizes (it waits for the other ranks) turned a finished job's exit code into 143, which the SLURM template
    counts as a failed run (a review)."""
    code = main()
    for sig in (signal.SIGTERM, signal.SIGUSR1):
        signal.signal(sig, signal.SIG_IGN)
    sys.exit(code)


__all__ = ["build_parser", "console", "main"]
