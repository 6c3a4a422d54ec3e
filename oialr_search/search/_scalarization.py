"""Propulate minimizes one float; this turns a trial's objective values into that float.

Every evaluated individual carries its raw objective values (minimize sense) and its state as
attributes, which travel with it to the other workers of its island and, when it migrates, to other
islands. Its ``loss`` is only provisional: before each breeding, :class:`RescoringPropagator` scores
the whole population again — on copies, because Propulate matches individuals across workers by
their loss — in NSGA-II's order (Deb et al. 2002): by non-dominated front (0, 1, 2, ...), and within
a front the more isolated first (larger crowding distance; the ends of each objective first of all;
copies of a point behind the rest of its front):

    s = front + 0.9 / (1 + crowding)

Propulate breeds from the individuals with the lowest loss (see ``_selection``), so its parents come
from the best fronts, spread along them, with the two ends of the trade-off among them. An augmented
Chebyshev function under a weight vector that changed with every proposal came first: late in a
search its breeding population gathered around one trade-off, and on the digits task the NSGA-II
order reached the larger front hypervolume at 48 trials on 17 seeds of 20 (level at 24; see the
README). Migrants and trials rebuilt from the database are scored for the island that receives them,
since the whole population is scored again at every breeding. With one objective the provisional
loss (the value, with infeasible and PRUNED trials pushed behind) already is the ranking, so nothing
is rescored. A PRUNED trial is ranked by its projection to the end of training (``PROJECTED``, see
``_projection``) together with the completed ones. Completed trials that violate the study's
constraints rank after every feasible one, PRUNED trials with nothing to project with after those (each
group in its own NSGA-II order), failed ones are +inf.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence

from ._pareto import non_dominated

VALUES, STATE, FEASIBLE = "oialr_values", "oialr_state", "oialr_feasible"  # attributes on Propulate individuals
PROVISIONAL_STEP = 1e9  # the same order on raw values (a loss, -accuracy, seconds, fractions)
PROJECTED = "PROJECTED"  # the state of a PRUNED trial whose values are its projection (ranked as completed)
_RANKED = ("COMPLETE", "PRUNED", PROJECTED)


def _tier(state: str, feasible: bool | None) -> int:
    return 2 if state == "PRUNED" else (1 if feasible is False else 0)


def attach(individual, values: Sequence[float] | None, state: str, feasible: bool | None = None) -> float:  # noqa: ANN001
    """Record the outcome on the individual; returns its provisional loss (first objective, with
    infeasible and pruned trials behind every feasible completed one). ``state``: the trial's, or
    ``PROJECTED`` for a pruned trial given with its projected values."""
    setattr(individual, VALUES, tuple(values) if values is not None else None)
    setattr(individual, STATE, state)
    setattr(individual, FEASIBLE, feasible)
    return provisional(values, state, feasible)


def provisional(values: Sequence[float] | None, state: str, feasible: bool | None = None) -> float:
    """The provisional loss of :func:`attach`: the first objective, with infeasible and pruned trials behind
    every feasible completed one; +inf without finite values."""
    if values is None or state not in _RANKED or not all(math.isfinite(v) for v in values):
        return math.inf
    return float(values[0]) + PROVISIONAL_STEP * _tier(state, feasible)


def crowding(points: Sequence[tuple[float, ...]]) -> list[float]:
    """NSGA-II's crowding distance of each point of one front (distinct points): per objective, the
    gap between its two neighbours over the front's range, summed; the two ends of each objective
    that varies get +inf (an objective constant over the front adds nothing, rather than handing +inf to
    whichever points come first and last in the list)."""
    out = [0.0] * len(points)
    for j in range(len(points[0]) if points else 0):
        order = sorted(range(len(points)), key=lambda i: points[i][j])
        lo, hi = points[order[0]][j], points[order[-1]][j]
        if not hi > lo:
            continue
        out[order[0]] = out[order[-1]] = math.inf
        half = not math.isfinite(hi - lo)  # a range wider than the largest float: in halves, not inf/inf
        span = hi / 2 - lo / 2 if half else hi - lo
        for a, b, c in zip(order, order[1:], order[2:]):
            out[b] += ((points[c][j] / 2 - points[a][j] / 2) if half else (points[c][j] - points[a][j])) / span
    return out


def nsga_scores(points: Sequence[tuple[float, ...] | None], states: Sequence[str], *,
                feasible: Sequence[bool | None] | None = None, keep: int | None = None) -> list[float]:
    """Scores of ``points`` (minimize sense) in NSGA-II's order, lower first: front index, then larger
    crowding distance; infeasible completed points after every feasible one, pruned ones (``PRUNED``; a
    ``PROJECTED`` one ranks as completed) after those.
    A point equal to an earlier one of its front ranks behind every distinct point of the front, so
    copies do not take the breeding places of the rest of the front.

    ``keep``: only the order of the best ``keep`` matters (Propulate breeds from them), so fronts are
    peeled off until that many are scored, and the rest of the tier share one score behind them all;
    this bounds the work on a large population whose points form many fronts."""
    feasible = feasible if feasible is not None else [None] * len(points)
    keep = len(points) if keep is None else keep
    width = len(points) + 1  # a tier's scores lie in [offset, offset + width]: a front index is below len(points)
    out = [math.inf] * len(points)
    tiers: dict[int, list[int]] = {}
    for i, (p, s, f) in enumerate(zip(points, states, feasible)):
        if p is not None and s in _RANKED and all(map(math.isfinite, p)):
            tiers.setdefault(_tier(s, f), []).append(i)
    scored = 0
    for tier in sorted(tiers):
        offset, rest, front_index = 2 * width * tier, tiers[tier], 0
        while rest:
            if scored >= keep:
                for i in rest:
                    out[i] = offset + width
                break
            front = [rest[k] for k in non_dominated([points[i] for i in rest])]
            distinct = list({tuple(points[i]): i for i in reversed(front)}.values())  # the first of equal points
            for i, c in zip(distinct, crowding([points[i] for i in distinct])):
                out[i] = offset + front_index + 0.9 / (1.0 + c)
            for i in set(front).difference(distinct):  # copies: behind the distinct points (at most + 0.9)
                out[i] = offset + front_index + 0.95
            scored += len(front)
            on_front = set(front)
            rest = [i for i in rest if i not in on_front]
            front_index += 1
    return out


class RescoringPropagator:
    """Wraps a Propulate propagator: rescore copies of the population, then breed from them."""

    def __init__(self, inner, *, n_objectives: int, pop_size: int | None = None) -> None:  # noqa: ANN001
        self.inner, self.n_objectives, self.pop_size = inner, n_objectives, pop_size

    def __call__(self, individuals: list):  # noqa: ANN204
        if self.n_objectives == 1:
            return self.inner(individuals)
        # shallow copies suffice: Propulate's operators deep-copy a parent before changing it
        scored = [copy.copy(ind) for ind in individuals]
        points = [getattr(ind, VALUES, None) for ind in scored]
        states = [getattr(ind, STATE, "FAILED" if not math.isfinite(ind.loss) else "COMPLETE") for ind in scored]
        feasible = [getattr(ind, FEASIBLE, None) for ind in scored]
        # an individual without recorded values (not ours) keeps its loss as a single objective
        points = [p if p is not None or not math.isfinite(ind.loss) else (ind.loss,) * self.n_objectives
                  for p, ind in zip(points, scored)]
        for ind, s in zip(scored, nsga_scores(points, states, feasible=feasible, keep=self.pop_size)):
            ind.loss = s
        return self.inner(scored)
