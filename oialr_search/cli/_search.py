"""``oialr-search run`` and ``resume``."""

from __future__ import annotations

import argparse

from ..exceptions import OIALRSearchError
from ..storage import default_storage
from ._common import add_storage


def _check(args: argparse.Namespace) -> None:
    """What can be refused before anything is opened or written."""
    from ..search._heartbeat import heartbeat_interval
    from ..training._distributed import collective_timeout

    if args.budget is not None and args.budget < 1:
        raise OIALRSearchError(f"--budget: must be at least 1 trial, got {args.budget}")
    heartbeat_interval()  # the environment's settings, read again where they are used
    collective_timeout()


def cmd_run(args: argparse.Namespace) -> int:
    from ..search import SearchRequest, load_space, run_search

    _check(args)
    space = load_space(args.space)
    return run_search(SearchRequest(study=args.study, storage=args.storage or default_storage(), space=space,
                                    backend=args.backend, budget=args.budget, seed=args.seed,
                                    overrides=tuple(args.set), ranks_per_trial=args.ranks_per_trial,
                                    workdir=args.workdir))


def cmd_resume(args: argparse.Namespace) -> int:
    from ..search import SearchRequest, run_search
    from ..storage import Store

    _check(args)
    storage = args.storage or default_storage()
    peek = Store(storage, create=False, read_only=True)  # read-only: a refused resume leaves the file as it was
    try:
        peek.get_study(args.study)  # a clear error for an unknown study
    finally:
        peek.engine.dispose()
    return run_search(SearchRequest(study=args.study, storage=storage, space=None, backend=args.backend,
                                    budget=args.budget, seed=args.seed, overrides=tuple(args.set),
                                    ranks_per_trial=args.ranks_per_trial, workdir=args.workdir))


def _add_job_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workdir", default=None, metavar="DIR",
                   help="the study's work folder for trial checkpoints, shared by its jobs (default: next to a "
                        "SQLite file, else ./oialr_search_work); on several nodes, a filesystem all of them see")
    _add_ranks_per_trial(p)


def _add_ranks_per_trial(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ranks-per-trial", type=int, default=1, metavar="K",
                   help="train every trial with DistributedDataParallel over K consecutive ranks of one node "
                        "(one GPU each); train.batch_size stays the global batch (default 1)")


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
    p.add_argument("--seed", type=int, default=0)
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
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="change or add an override of a non-searched base-config key, e.g. a moved data.path "
                        "(repeatable); merged into the study's stored overrides, later wins")
    _add_job_options(p)
    p.set_defaults(func=cmd_resume)
