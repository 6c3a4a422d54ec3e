"""Public names of a package, imported from their submodules when first used (PEP 562).

``oialr_search.search`` and ``oialr_search.training`` re-export names whose modules import torch (about
2 s). The query verbs (``status``, ``best``, ``pareto``, ``trials``…) need none of it, but with eager
re-exports importing any submodule, even ``search._pareto``, ran the package's ``__init__`` and paid for
torch anyway.

A package lists its public names once, as the relative imports of its ``if TYPE_CHECKING:`` block (what
type checkers and IDEs read), beside a literal ``__all__`` (which ruff checks against those imports), and
ends with ``__getattr__, __dir__ = lazy_exports(__name__, __file__)``.
"""

from __future__ import annotations

import ast
import importlib
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any


def _type_checking_imports(init_file: str) -> dict[str, str]:
    """Each name imported by a relative ``from .x import name`` in the module's top-level
    ``if TYPE_CHECKING:`` block, mapped to its module (``".x"``)."""
    tree = ast.parse(Path(init_file).read_text(encoding="utf-8"), filename=init_file)
    exports: dict[str, str] = {}
    for node in tree.body:
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            for stmt in node.body:
                if isinstance(stmt, ast.ImportFrom) and stmt.level == 1 and stmt.module:
                    for alias in stmt.names:
                        exports[alias.asname or alias.name] = "." + stmt.module
    return exports


def lazy_exports(package: str, init_file: str) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``package``, whose ``__init__`` is ``init_file``. A public name is
    imported on first access and then kept in the package's namespace, so later lookups are plain
    attribute reads."""
    exports = _type_checking_imports(init_file)
    assert exports, f"{init_file}: no relative imports under 'if TYPE_CHECKING:'"

    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module, package), name)
        setattr(sys.modules[package], name, value)
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(exports))

    return __getattr__, __dir__
