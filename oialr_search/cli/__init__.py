"""The ``oialr-search`` command line.

Exit codes: 0 success, 2 bad input (one line that says what to fix), 1 internal failure.
"""

from __future__ import annotations

import argparse
import sys

from ..exceptions import OIALRSearchError
from . import _query, _search, _storage, _train


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="oialr-search", description="OIALR training and hyperparameter search.")
    sub = parser.add_subparsers(dest="command", required=True)
    _train.add_parser(sub)
    _search.add_parsers(sub)
    _query.add_parsers(sub)
    _storage.add_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except OIALRSearchError as exc:
        print(f"oialr-search {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"oialr-search {args.command}: interrupted", file=sys.stderr)
        return 130


__all__ = ["build_parser", "main"]
