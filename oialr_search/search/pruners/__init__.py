"""Pruners: early stopping of trials after each epoch, by comparison with their peers.

A study's pruner spec is ``none`` (the default), a type name, or a mapping such as
``{type: asha, min_epochs: 1, reduction: 3}``; :func:`create_pruner` turns it into a pruner.
"""

from __future__ import annotations

from typing import Any

from ._asha import ASHAPruner
from ._base import BasePruner, PrunerError
from ._median import MedianPruner
from ._nop import NopPruner

PRUNERS: dict[str, type[BasePruner]] = {"none": NopPruner, "median": MedianPruner, "asha": ASHAPruner}

__all__ = ["PRUNERS", "ASHAPruner", "BasePruner", "MedianPruner", "NopPruner", "PrunerError", "create_pruner"]


def create_pruner(spec: dict[str, Any] | str | None) -> BasePruner:
    """Build a pruner from its spec: ``None`` or ``"none"`` (no pruning), a type name, or a mapping.

    A mapping needs ``type``; its other keys are the type's constructor fields. Raises
    :class:`PrunerError` (a ``ValueError``) whose message starts with the offending field.
    """
    if spec is None:
        return NopPruner()
    if isinstance(spec, str):
        spec = {"type": spec}
    if not isinstance(spec, dict):
        raise PrunerError(f"pruner: must be a type name or a mapping with a 'type' key, got {spec!r}")
    kind = spec.get("type")
    if "type" not in spec:
        raise PrunerError(f"type: missing; must be one of {', '.join(PRUNERS)}")
    if not isinstance(kind, str) or kind not in PRUNERS:
        raise PrunerError(f"type: must be one of {', '.join(PRUNERS)}, got {kind!r}")
    cls = PRUNERS[kind]
    kwargs = {k: v for k, v in spec.items() if k != "type"}
    for key in kwargs:
        if key not in cls.fields:
            expected = ", ".join(cls.fields) if cls.fields else "no fields"
            raise PrunerError(f"{key}: unknown field for pruner type {kind}; expected {expected}")
    return cls(**kwargs)
