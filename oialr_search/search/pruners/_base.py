"""The pruner interface: after each epoch, stop a trial early if it compares badly with its peers."""

from __future__ import annotations

import abc
import math
from collections.abc import Sequence
from typing import Any, ClassVar

from ...exceptions import OIALRSearchError

Vector = tuple[float, ...]


class PrunerError(OIALRSearchError, ValueError):
    """A pruner spec is invalid; the message starts with the field, e.g. ``reduction: must be ...``."""


def check_int(field: str, value: Any, minimum: int) -> int:
    """Return ``value`` if it is an integer ``>= minimum`` (bools are not), else raise :class:`PrunerError`."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise PrunerError(f"{field}: must be an integer >= {minimum}, got {value!r}")
    return value


def count_dominating(values: Vector, peers: Sequence[Vector]) -> int:
    """How many ``peers`` Pareto-dominate ``values`` (all minimize sense)."""
    from .._pareto import dominates  # local: keeps the pruners importable without the rest of search

    return sum(dominates(p, values) for p in peers)


class BasePruner(abc.ABC):
    """Decides, at chosen epochs, whether a running trial should stop early.

    The runner asks :meth:`decides_at` after each completed epoch and, only where it says so,
    :meth:`should_prune` with the trial's intermediate objective values and those of its peers at the
    same epoch. All values are in the minimize sense (maximized objectives negated).
    """

    name: ClassVar[str]
    fields: ClassVar[tuple[str, ...]] = ()  # constructor keywords, in to_dict order

    def decides_at(self, epoch: int, max_epochs: int) -> bool:
        """Whether ``epoch`` (1-based count of completed epochs) is a decision point.

        Never the final epoch: a trial that reached ``max_epochs`` is done anyway.
        """
        return 1 <= epoch < max_epochs and self._decides_at(epoch)

    def should_prune(self, *, values: Sequence[float], peers: Sequence[Sequence[float]]) -> bool:
        """Whether to stop the trial now.

        ``values``: this trial's intermediate objective values at this epoch, one per objective.
        ``peers``: the same-epoch values of every other trial of the study that reached this epoch,
        whatever its state. A non-finite own value prunes; a peer with a non-finite value counts as
        worse than anything.
        """
        own = tuple(float(v) for v in values)
        if not own:
            raise ValueError("values: need at least one objective value")
        if not all(math.isfinite(v) for v in own):
            return True
        others: list[Vector] = []
        for i, peer in enumerate(peers):
            vec = tuple(float(v) for v in peer)
            if len(vec) != len(own):
                raise ValueError(f"peers[{i}]: has {len(vec)} values, expected {len(own)}")
            # +inf everywhere is worse than any finite vector, in both single- and multi-objective rules.
            others.append(vec if all(math.isfinite(v) for v in vec) else (math.inf,) * len(own))
        return self._should_prune(own, others)

    def to_dict(self) -> dict[str, Any]:
        """The spec back, e.g. ``{"type": "asha", "min_epochs": 1, "reduction": 3}``."""
        return {"type": self.name, **{f: getattr(self, f) for f in self.fields}}

    def __repr__(self) -> str:
        args = ", ".join(f"{f}={getattr(self, f)!r}" for f in self.fields)
        return f"{type(self).__name__}({args})"

    @abc.abstractmethod
    def _decides_at(self, epoch: int) -> bool:
        """Whether ``epoch`` (``1 <= epoch < max_epochs``) is a decision point."""

    @abc.abstractmethod
    def _should_prune(self, values: Vector, peers: list[Vector]) -> bool:
        """The rule, with finite ``values`` and peers of the same length (non-finite ones set to +inf)."""
