"""Queries over a study's results: the Pareto front, the best trial, and ``--pick`` selections."""

from __future__ import annotations

import math
from collections.abc import Sequence

from ..storage import Store, Study, Trial
from ._objectives import minimize_sense, objectives_from
from ._pareto import Condition, non_dominated


def _usable(t: Trial, n: int) -> bool:
    return t.values is not None and len(t.values) == n and all(v is not None and math.isfinite(v) for v in t.values)


def pareto_front(store: Store, study: Study) -> list[Trial]:
    """The non-dominated feasible COMPLETE trials, by number."""
    objectives = objectives_from(study.objectives)
    trials = [t for t in store.front_candidates(study) if _usable(t, len(objectives))]
    points = [minimize_sense(t.values, objectives) for t in trials]
    return [trials[i] for i in non_dominated(points)]


def metric_of(t: Trial, metric: str) -> float | None:
    value = (t.metrics or {}).get(metric)
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def pick(store: Store, study: Study, conditions: Sequence[Condition]) -> Trial | None:
    """The best trial on the first objective among the feasible COMPLETE ones meeting every condition."""
    objectives = objectives_from(study.objectives)
    ok = [t for t in store.front_candidates(study) if _usable(t, len(objectives))
          and all(c.holds(metric_of(t, c.metric)) for c in conditions)]
    if not ok:
        return None
    first = objectives[0]
    return min(ok, key=lambda t: (first.to_min(t.values[0]), t.number))
