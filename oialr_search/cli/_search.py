"""``oialr-search run`` and ``resume``."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import TypeVar

from ..exceptions import OIALRSearchError
from ..storage import default_storage
from ._common import add_storage

T = TypeVar("T")


def _check(args: argparse.Namespace) -> None:
    """What can be refused before anything is opened or written."""
    from ..search._heartbeat import heartbeat_interval
    from ..training._distributed import collective_timeout

    if args.budget is not None and args.budget < 1:
        raise OIALRSearchError(f"--budget: must be at least 1 trial, got {args.budget}")
    heartbeat_interval()  # the environment's settings, read again where they are used
    collective_timeout()


def _refuse_unrunnable(space: object, study: str | None = None) -> None:  # a SearchSpace
    """Refuse a search whose data set is not where ``space`` says (see data_problem); ``study``: a stored one."""
    from ..search._study_checks import data_problem

    problem = data_problem(space, stored=study)
    if problem is not None:
        raise OIALRSearchError(problem)


class _SaidByRank0(OIALRSearchError):
    """This rank's part of an error that rank 0 of the MPI job prints (main prints no empty message)."""

    def __init__(self) -> None:
        super().__init__("")


def before_search(check: Callable[[], T]) -> T:
    """``check()``, what run and resume refuse before the search, on every rank. Under mpiexec the ranks check
    the same command line but maybe not the same files (a database on a node's own disk): their errors meet
    on rank 0, which says each different one once, and every rank exits 2, so none is left waiting in MPI
    for a rank that left before it started."""
    from ..search._runner import _world

    internal: Exception | None = None
    try:
        result, error = check(), None
    except OIALRSearchError as exc:
        result, error = None, str(exc)
    except Exception as exc:  # noqa: BLE001 - a bug: it must reach the others too, or they wait forever
        result, error, internal = None, f"internal error: {type(exc).__name__}: {exc}", exc
    comm = _world()
    if comm is None or comm.Get_size() == 1:
        if internal is not None:
            raise internal
        if error is not None:
            raise OIALRSearchError(error)
        return result
    errors = comm.allgather(error)
    if not any(e is not None for e in errors):
        return result
    from mpi4py import MPI

    rank = comm.Get_rank()
    MPI.Finalize()  # every rank ends here, together: exit code 2 then aborts nothing (python -m mpi4py would)
    if internal is not None:
        raise internal  # its traceback, exit code 1, on the rank that had it
    if rank != 0:
        raise _SaidByRank0
    distinct = list(dict.fromkeys(e for e in errors if e is not None))
    if len(distinct) == 1 and all(e is not None for e in errors):
        raise OIALRSearchError(distinct[0])
    raise OIALRSearchError("; ".join(f"rank {errors.index(e)}{' and others' if errors.count(e) > 1 else ''}: {e}"
                                     for e in distinct))


def cmd_run(args: argparse.Namespace) -> int:
    from ..search import SearchRequest, load_space, run_search

    def check():  # noqa: ANN202
        _check(args)
        space = load_space(args.space)
        # on every rank: a malformed --set, and a data set missing on this rank's node (its own disk)
        _refuse_unrunnable(space.with_overrides(args.set) if args.set else space)
        return space

    space = before_search(check)
    return run_search(SearchRequest(study=args.study, storage=args.storage or default_storage(), space=space,
                                    backend=args.backend, budget=args.budget, seed=args.seed,
                                    overrides=tuple(args.set), ranks_per_trial=args.ranks_per_trial,
                                    workdir=args.workdir, storage_given=args.storage is not None))


def cmd_resume(args: argparse.Namespace) -> int:
    from ..search import SearchRequest, SearchSpace, merge_overrides, run_search
    from ..storage import Store

    storage = args.storage or default_storage()

    def check() -> None:
        _check(args)
        peek = Store(storage, create=False, read_only=True)  # read-only: a refused resume leaves the file as it was
        try:
            study = peek.get_study(args.study)  # a clear error for an unknown study
        finally:
            peek.engine.dispose()
        try:
            space = SearchSpace.from_dict(study.space)
        except Exception:  # noqa: BLE001 - a stored space this release cannot read: the runner says what is wrong
            return
        if args.set:
            space = space.with_overrides(merge_overrides(space.overrides, args.set))
        _refuse_unrunnable(space, study=args.study)

    before_search(check)
    return run_search(SearchRequest(study=args.study, storage=storage, space=None, backend=args.backend,
                                    budget=args.budget, seed=args.seed, overrides=tuple(args.set),
                                    ranks_per_trial=args.ranks_per_trial, workdir=args.workdir,
                                    storage_given=args.storage is not None))


def _add_job_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workdir", default=None, metavar="DIR",
                   help="the study's work folder for trial checkpoints, shared by its jobs (default: next to a "
                        "SQLite file, else ./oialr_search_work); on several nodes, a filesystem all of them see")
    _add_ranks_per_trial(p)


def _add_ranks_per_trial(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ranks-per-trial", type=int, default=1, metavar="K",
                   help="train every trial with DistributedDataParallel over K consecutive ranks of one node "
                        "(one GPU each); train.batch_size stays the global batch (default 1)")


def _seed(text: str) -> int:
    """resume's --seed, the base of the job's sampler seeds: in the range a new study takes."""
    from ..search._study_checks import MAX_SEED

    try:
        seed = int(text)
    except ValueError:
        seed = -1
    if not 0 <= seed <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"must be a whole number from 0 to {MAX_SEED}, got {text!r}")
    return seed


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="run a search (under mpiexec: every rank trains one config at a time)")
    p.add_argument("space", help="search-space YAML (see search_spaces/)")
    p.add_argument("--study", required=True, help="study name; running again with it continues the study")
    add_storage(p)
    p.add_argument("--backend", choices=("auto", "propulate", "optuna", "random"), default="auto",
                   help="auto: Propulate with 2+ MPI ranks, else Optuna; random: uniform random search (a baseline)")
    p.add_argument("--budget", type=int, default=None,
                   help="the study's total of finished trials over all its jobs, not a number of new trials "
                        "(default 20; a study continued without it keeps its own)")
    # (a new study's seed is checked with its name and space; one stored by an earlier release continues)
    p.add_argument("--seed", type=int, default=0, help="the study's sampler seed (0 to 2³¹−1 for a new study)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a key of the space's base config (not a searched one), value parsed as YAML, e.g. "
                        "--set data.path=/scratch/cifar-10-batches-py (repeatable); stored with the study")
    _add_job_options(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("resume", help="continue a stored study (same as run with its stored space)")
    p.add_argument("--study", required=True)
    add_storage(p)
    p.add_argument("--backend", choices=("auto", "propulate", "optuna", "random"), default="auto")
    p.add_argument("--budget", type=int, default=None,
                   help="the study's new total of finished trials over all its jobs, not a number of new trials "
                        "(default: the stored one)")
    p.add_argument("--seed", type=_seed, default=0, help="the base of this job's sampler seeds (0 to 2³¹−1)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="change or add an override of a non-searched base-config key, e.g. a moved data.path "
                        "(repeatable); merged into the study's stored overrides, later wins")
    _add_job_options(p)
    p.set_defaults(func=cmd_resume)
