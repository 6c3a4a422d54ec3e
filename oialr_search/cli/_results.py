"""Result verbs: ``plot`` (a study's figures as PNG files) and ``report`` (one self-contained HTML file)."""

from __future__ import annotations

import argparse

from ..storage import Store, default_storage
from ..storage._paths import recorded_workdir
from ._common import add_study, check_not_the_studys_files


def _store(args: argparse.Namespace) -> Store:
    # as the query verbs: SQLite opened read-only, so a running search is neither blocked nor changed
    return Store(args.storage or default_storage(), create=False, read_only=True)


def cmd_plot(args: argparse.Namespace) -> int:
    from ..plots import check_output_dir, study_figures, write_figures

    out = check_output_dir(args.output)  # every check before anything is written
    store = _store(args)
    study = store.get_study(args.study)
    figures, notes = study_figures(store, study, top=args.top)
    for note in notes:
        print(f"note: {note}")
    for path in write_figures(figures, out):
        print(path)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from .._files import write_file_atomic
    from ..plots import check_output_file, study_report

    out = check_output_file(args.output)
    check_not_the_studys_files({"-o": out}, args)
    store = _store(args)
    study = store.get_study(args.study)
    check_not_the_studys_files({"-o": out}, args, recorded=recorded_workdir(study.space))
    text, notes = study_report(store, study, top=args.top)
    for note in notes:
        print(f"note: {note}")
    write_file_atomic(out, text)
    print(out)
    return 0


def _top(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        n = -1
    if n < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {value!r}")
    return n


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plot", help="write a study's figures (PNG): history, Pareto front, parallel coordinates, "
                                    "importances, learning curves, and the best trials' ranks and Stability")
    add_study(p)
    p.add_argument("-o", "--output", required=True, metavar="DIR",
                   help="folder for the PNG files (created if its parent folder exists)")
    p.add_argument("--top", type=_top, default=3, metavar="N",
                   help="draw the OIALR figures of the N best trials (default 3)")
    p.set_defaults(func=cmd_plot)
    p = sub.add_parser("report", help="write one self-contained HTML report of a study: front, best configs, "
                                      "every figure, failures, settings")
    add_study(p)
    p.add_argument("-o", "--output", required=True, metavar="FILE", help="HTML file to write")
    p.add_argument("--top", type=_top, default=3, metavar="N",
                   help="best trials to show with their configs and OIALR figures (default 3)")
    p.set_defaults(func=cmd_report)
