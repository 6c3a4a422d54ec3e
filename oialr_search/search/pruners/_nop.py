"""The pruner that never stops a trial (``type: none``)."""

from __future__ import annotations

from collections.abc import Sequence

from ._base import BasePruner, Vector


class NopPruner(BasePruner):
    """Never decides and never prunes: every trial runs all its epochs."""

    name = "none"

    def __init__(self) -> None:
        pass

    def should_prune(self, *, values: Sequence[float], peers: Sequence[Sequence[float]]) -> bool:
        """Always False, even for a NaN value: ``none`` means no early stopping at all."""
        return False

    def _decides_at(self, epoch: int) -> bool:
        return False

    def _should_prune(self, values: Vector, peers: list[Vector]) -> bool:
        return False
