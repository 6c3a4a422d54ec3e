"""Storage verbs: ``storage upgrade``."""

from __future__ import annotations

import argparse

from ..storage import default_storage
from ..storage._migrate import row_counts, upgrade
from ._common import add_storage


def cmd_upgrade(args: argparse.Namespace) -> int:
    url = args.storage or default_storage()
    before, after = upgrade(url, force=args.force)
    if before == after:
        print(f"{url} is up to date (schema v{after})")
        return 0
    n = row_counts(url)
    print(f"upgraded {url}: schema v{before} -> v{after} "
          f"({n['studies']} studies, {n['trials']} trials, {n['epochs']} epochs kept)")
    if n["running"]:  # only with --force
        print(f"{n['running']} trial(s) left RUNNING by the older release: the next search of their study resumes "
              "them (from scratch: that release wrote no trial checkpoints)")
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("storage", help="manage a storage: upgrade its schema to this release's")
    verbs = p.add_subparsers(dest="storage_command", required=True)
    p = verbs.add_parser("upgrade", help="upgrade a database made by an older release (keeps every study and trial)")
    add_storage(p)
    p.add_argument("--force", action="store_true",
                   help="upgrade even though trials are RUNNING (their job died; a live job of the older release "
                        "would fail once the tables are rebuilt)")
    p.set_defaults(func=cmd_upgrade)
