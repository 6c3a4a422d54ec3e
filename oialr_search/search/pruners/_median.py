"""Median stopping: stop a trial that is worse than the median of its peers at the same epoch."""

from __future__ import annotations

import statistics

from ._base import BasePruner, Vector, check_int, count_dominating


class MedianPruner(BasePruner):
    """Prune a trial worse than the median of its peers, at every epoch from ``min_epochs`` on.

    Decides only once at least ``min_trials`` peers reached the epoch. One objective: prune iff the
    value is strictly worse than the peers' median. Several: prune iff more than half of the peers
    dominate the trial.
    """

    name = "median"
    fields = ("min_epochs", "min_trials")

    def __init__(self, *, min_epochs: int = 1, min_trials: int = 4) -> None:
        self.min_epochs = check_int("min_epochs", min_epochs, 1)
        self.min_trials = check_int("min_trials", min_trials, 1)

    def _decides_at(self, epoch: int) -> bool:
        return epoch >= self.min_epochs

    def _should_prune(self, values: Vector, peers: list[Vector]) -> bool:
        if len(peers) < self.min_trials:
            return False
        if len(values) == 1:
            return values[0] > statistics.median(p[0] for p in peers)
        return 2 * count_dominating(values, peers) > len(peers)
