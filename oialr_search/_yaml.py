"""YAML as users write it in configs and search spaces: PyYAML's safe loader and dumper, with ``1e-3`` a
number.

PyYAML follows YAML 1.1, where a float needs a dot and a signed exponent (``1.0e-3``), and ``1e-3`` or
``2.5e3`` is a string, which our configs then refused as "expected a number" (found by a sweep); YAML
1.2, and every other tool a user writes learning rates for, read them as numbers. The dumper knows the
same rule, so it quotes a string that would read back as a number (``data.path: '1e5'``)."""

from __future__ import annotations

import re
from typing import Any

import yaml

# YAML 1.2's floats with an exponent that YAML 1.1 does not have: no dot (1e-3, 5E+4) or an unsigned
# exponent (2.5e3), added after the built-in rules (which still read 1.0e-3, 0.5 and .inf)
_FLOAT = re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$")


class _Loader(yaml.SafeLoader):
    pass


class _Dumper(yaml.SafeDumper):
    pass


for _cls in (_Loader, _Dumper):
    _cls.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT, list("-+0123456789."))


def load_yaml(text: str) -> Any:  # noqa: ANN401 - whatever the document holds
    """``yaml.safe_load`` of ``text``, with ``1e-3`` and ``2.5e3`` read as floats. A value PyYAML cannot build
    (a date such as 2024-02-30) raises ``yaml.YAMLError`` as any other fault of the text does."""
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
    except (ValueError, OverflowError) as exc:
        raise yaml.YAMLError(str(exc)) from None


def dump_yaml(data: Any, **options: Any) -> str:  # noqa: ANN401
    """``yaml.safe_dump`` of ``data`` that :func:`load_yaml` reads back as it was."""
    return yaml.dump(data, Dumper=_Dumper, **options)
