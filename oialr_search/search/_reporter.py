"""Per-epoch reports of a running trial: stored as they happen, then judged by the study's pruner.

The pruner decides from what the shared store holds for that epoch — every rank's and every job's
trials, whatever the backend — so the same rule holds everywhere and a resumed job keeps pruning
against the trials of the jobs before it.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..storage import Store, Study
from ._objectives import Objective, minimize_sense, objective_values
from .pruners import BasePruner


class EpochReporter:
    """``reporter(record) -> bool``: store the epoch, then whether the trial goes on."""

    def __init__(self, *, store: Store, study: Study, trial_id: int, objectives: Sequence[Objective],
                 pruner: BasePruner, max_epochs: int) -> None:
        self.store, self.study, self.trial_id = store, study, trial_id
        self.objectives, self.pruner, self.max_epochs = tuple(objectives), pruner, max_epochs
        self._metrics = tuple(o.metric for o in self.objectives)
        self.pruned_at: int | None = None

    def __call__(self, record: dict) -> bool:
        self.store.report_epoch(self.trial_id, record)
        epoch = record["epoch"]
        if not self.pruner.decides_at(epoch, self.max_epochs):
            return True
        rows = self.store.epoch_values(self.study, epoch, self._metrics, exclude_trial=self.trial_id)
        peers = [minimize_sense(row, self.objectives) for row in rows]
        own = minimize_sense(objective_values(record, self.objectives), self.objectives)
        if self.pruner.should_prune(values=own, peers=peers):
            self.pruned_at = epoch
            return False
        return True
