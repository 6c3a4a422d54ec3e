"""Asynchronous successive halving (ASHA): keep the top ``1/reduction`` of each rung."""

from __future__ import annotations

from ._base import BasePruner, Vector, check_int, count_dominating


class ASHAPruner(BasePruner):
    """Asynchronous successive halving, with rungs at epochs ``min_epochs * reduction**k``.

    At a rung reached by ``n`` trials so far (this one included), one objective: the trial goes on
    iff its value is within the best ``max(1, n // reduction)`` (ties favour it), as in Optuna's
    ``SuccessiveHalvingPruner``; so a rung's best, and the first trial to reach a rung, always go
    on. Several objectives: prune iff more than a ``1 - 1/reduction`` share of the peers dominate it;
    a non-dominated trial always goes on.
    """

    name = "asha"
    fields = ("min_epochs", "reduction")

    def __init__(self, *, min_epochs: int = 1, reduction: int = 3) -> None:
        self.min_epochs = check_int("min_epochs", min_epochs, 1)
        self.reduction = check_int("reduction", reduction, 2)

    def _decides_at(self, epoch: int) -> bool:
        if epoch < self.min_epochs or epoch % self.min_epochs:
            return False
        q = epoch // self.min_epochs
        while q % self.reduction == 0:
            q //= self.reduction
        return q == 1

    def _should_prune(self, values: Vector, peers: list[Vector]) -> bool:
        if len(values) == 1:
            rung = sorted([values[0], *(p[0] for p in peers)])
            keep = max(1, len(rung) // self.reduction)
            return values[0] > rung[keep - 1]
        # d > (1 - 1/r) * n, in integers so that exact shares do not hinge on float rounding.
        return count_dominating(values, peers) * self.reduction > (self.reduction - 1) * len(peers)
