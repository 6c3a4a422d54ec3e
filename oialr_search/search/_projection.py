"""What a pruned trial would likely have reached: the values Propulate ranks it by.

A pruned trial's stored values are those of the epoch it stopped at, which no completed trial's final
values can be compared with (a loss after one epoch of four is worse than nearly any final loss).
Ranking every pruned trial behind every completed one instead left Propulate, under ASHA, breeding
from the few trials that had completed early: on the demo space (4 epochs, rungs at 1 and 3, about one
trial in eight completes) 11 of the last 15 children of one search had the learning rate of the one
trial that had completed among its first nine.

So a pruned trial is projected to the end with the study's own curves: per objective, its value at the
stop epoch plus how the completed trials changed from that epoch to their end, taking the upper
quartile of those changes (minimize sense: a pruned trial is assumed to improve as little as the
least-improving quarter of the completed ones), so it ranks behind a completed trial of similar
quality (with fewer than four such trials the quartile is interpolated between their changes; with
one, it is that trial's change). Without a completed trial that reached its epoch there is nothing to
project with, and it ranks behind every completed trial as before. In a study with constraints the
projection is judged by them too (``projected_feasible``), so a pruned trial never ranks ahead of an
infeasible completed one unless its projection is feasible. A projection is made once, when the trial
ends, from the trials completed by then; a later job's rebuild of the population projects again. The
database keeps the raw values; the projection is only Propulate's working value.

Measured with ASHA (min_epochs 1, reduction 3) on the demo space, 24 trials on 2 ranks, 8 seeds
(bench/search_quality.py --parts c): best val_loss 0.7449 ± 0.0973 ranked behind, 0.6815 ± 0.1043
projected (better on 6 seeds, equal on 1), against 0.6138 ± 0.0784 unpruned.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import TYPE_CHECKING

from ..storage import PRUNED, Store, Study
from ._objectives import Constraint, Objective, minimize_sense
from ._scalarization import PROJECTED

if TYPE_CHECKING:
    from ._space import SearchSpace

Curve = tuple[Sequence[float], Sequence[float]]  # (values at an epoch, final values) of one completed trial


def offsets(curves: Sequence[Curve]) -> tuple[float, ...] | None:
    """Per objective, the upper quartile of ``final - then`` over ``curves`` ((values then, final
    values) of completed trials, minimize sense); with one curve, its own change. None when no curve
    has finite values for every objective."""
    changes = [[f - t for t, f in zip(then, final, strict=True)] for then, final in curves
               if all(map(math.isfinite, (*then, *final)))]
    if not changes:
        return None
    out = []
    for column in zip(*changes):
        out.append(column[0] if len(column) == 1 else statistics.quantiles(column, n=4, method="inclusive")[2])
    return tuple(out)


def project(values: Sequence[float], curves: Sequence[Curve]) -> tuple[float, ...] | None:
    """``values`` (minimize sense, at the epoch a trial stopped) plus :func:`offsets` of ``curves``."""
    return _shifted(values, offsets(curves))


def _shifted(values: Sequence[float], shift: tuple[float, ...] | None) -> tuple[float, ...] | None:
    return tuple(v + d for v, d in zip(values, shift, strict=True)) if shift is not None else None


def projected_values(store: Store, study: Study, objectives: Sequence[Objective], epoch: int | None,
                     values: Sequence[float], *,
                     cache: dict[int, tuple[float, ...] | None] | None = None) -> tuple[float, ...] | None:
    """``values`` projected with the study's COMPLETE trials that reached ``epoch``: one read query, or
    none where ``cache`` already holds that epoch's offsets (many trials at once, as a resume rebuilds)."""
    if epoch is None or not all(map(math.isfinite, values)):
        return None
    if cache is not None and epoch in cache:
        shift = cache[epoch]
    else:
        rows = store.completed_curves_at(study, epoch, tuple(o.metric for o in objectives))
        shift = offsets([(minimize_sense(then, objectives), minimize_sense(final, objectives))
                         for then, final in rows if final is not None and len(final) == len(objectives)])
        if cache is not None:
            cache[epoch] = shift
    return _shifted(values, shift)


def projected_feasible(projected: Sequence[float], objectives: Sequence[Objective],
                       constraints: Sequence[Constraint]) -> bool | None:
    """Whether a projection meets the study's constraints: None without constraints; a constraint on
    an objective is judged on its projected value; one on any other metric, which is not projected,
    counts as violated (the trial then ranks with the infeasible completed ones, not ahead of them)."""
    if not constraints:
        return None
    raw = {o.metric: (v if o.minimize else -v) for o, v in zip(objectives, projected, strict=True)}
    return all(c.metric in raw and c.holds(raw[c.metric]) for c in constraints)


def ranked_as(store: Store, study: Study, space: SearchSpace, values: tuple[float, ...] | None, state: str,
              feasible: bool | None, stopped_at: int | None, *,
              cache: dict | None = None) -> tuple[tuple[float, ...] | None, str, bool | None]:
    """(values, state, feasibility) as Propulate ranks a trial: a PRUNED one by its projection to the end
    of training where the study has completed trials to project with (see the module)."""
    if state == PRUNED and values is not None:
        projected = projected_values(store, study, space.objectives, stopped_at, values, cache=cache)
        if projected is not None:
            return projected, PROJECTED, projected_feasible(projected, space.objectives, space.constraints)
    return values, state, feasible
