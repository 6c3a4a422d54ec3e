"""Helpers shared by the CLI verbs."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from ..storage import default_storage


def write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def add_storage(p: argparse.ArgumentParser) -> None:
    p.add_argument("--storage", default=None,
                   help=f"SQLAlchemy URL (default: $OIALR_SEARCH_STORAGE or {default_storage()})")


def add_study(p: argparse.ArgumentParser) -> None:
    p.add_argument("--study", required=True, help="study name")
    add_storage(p)
