"""YAML as users write it in configs and search spaces: PyYAML's safe loader, reading ``1e-3`` as a number.

PyYAML follows YAML 1.1, where a float needs a dot (``1.0e-3``) and ``1e-3`` is a string, which our
configs then refused as "expected a number" (found by a sweep); YAML 1.2, and every other tool a user
writes learning rates for, read it as a number."""

from __future__ import annotations

import re
from typing import Any

import yaml


class _Loader(yaml.SafeLoader):
    pass


# YAML 1.2's floats where 1.1 has none: an exponent without a dot (1e-3, 5E+4), added after the built-in rule
_Loader.add_implicit_resolver("tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+$"),
                              list("-+0123456789"))


def load_yaml(text: str) -> Any:  # noqa: ANN401 - whatever the document holds
    """``yaml.safe_load`` of ``text``, with ``1e-3`` read as a float."""
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
