"""Queries over a study's results: the Pareto front and ``--pick`` selections.

Both read only (number, objective values) of the study's feasible completed trials, and load the
few trials they return, so they stay fast on studies of many thousands of trials.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from ..storage import Store, Study, Trial
from ._objectives import minimize_sense, objectives_from
from ._pareto import Condition, non_dominated


def _points(store: Store, study: Study) -> list[tuple[int, tuple, tuple]]:
    """(number, raw values, values in minimize sense) of the feasible COMPLETE trials whose every
    value is finite."""
    objectives = objectives_from(study.objectives)
    out = []
    for number, values in store.objective_points(study):
        minimized = minimize_sense(values, objectives)  # missing or non-finite values become +inf
        if all(map(math.isfinite, minimized)):
            out.append((number, values, minimized))
    return out


def pareto_front(store: Store, study: Study) -> list[Trial]:
    """The non-dominated feasible COMPLETE trials, by number."""
    points = _points(store, study)
    front = non_dominated([p[2] for p in points])
    return store.trials_numbered(study, [points[i][0] for i in front]) if front else []


def metric_of(t: Trial, metric: str) -> float | None:
    value = (t.metrics or {}).get(metric)
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def pick(store: Store, study: Study, conditions: Sequence[Condition]) -> Trial | None:
    """The best trial on the first objective among the feasible COMPLETE ones meeting every condition;
    ties go to the better on the next objectives, then to the lower number, so a pick by objectives alone
    is on the Pareto front (and has kept weights, see _weights.py)."""
    position = {o["metric"]: j for j, o in enumerate(study.objectives)}
    ranked = sorted(_points(store, study), key=lambda p: (p[2], p[0]))  # best first objective first
    if all(c.metric in position for c in conditions):  # decided on the stored values alone
        for number, values, _ in ranked:
            if all(c.holds(values[position[c.metric]]) for c in conditions):
                return store.trials_numbered(study, [number])[0]
        return None
    trials = {t.number: t for t in store.trials_numbered(study, [p[0] for p in ranked])}
    for number, _, _ in ranked:
        if all(c.holds(metric_of(trials[number], c.metric)) for c in conditions):
            return trials[number]
    return None
