"""Propulate minimizes one float; this turns a trial's objective values into that float.

Every evaluated individual carries its raw objective values (minimize sense) and its state as
attributes, which travel with it to the other workers of its island and, when it migrates, to other
islands. Its ``loss`` is only provisional: before each breeding, :class:`RescoringPropagator` scores
the whole population again — on copies, because Propulate matches individuals across workers by
their loss — with an augmented Chebyshev scalarization

    s(f) = max_j w_j n_j(f) + rho * sum_j w_j n_j(f),   n_j = (f_j - min_j) / (max_j - min_j)

normalized by the completed individuals the island holds now, under a weight vector that changes with
every proposal (a golden-ratio sequence over the simplex, offset per rank). So every island
explores every trade-off over time, migrants and trials rebuilt from the database are scored for the
island that receives them. With one objective the provisional loss (the value, with infeasible
and PRUNED trials pushed behind) already is the ranking, so nothing is rescored. Completed trials
that violate the study's constraints rank after every feasible one, PRUNED trials after those (each
group by its own score), failed ones are +inf.
"""

from __future__ import annotations

import copy
import math
import random
from collections.abc import Sequence

VALUES, STATE, FEASIBLE = "oialr_values", "oialr_state", "oialr_feasible"  # attributes on Propulate individuals
_GOLDEN = (math.sqrt(5) - 1) / 2
# Completed feasible scores lie in [0, 1 + rho]; infeasible completed ones rank after all of them,
# pruned ones after those (each group ordered by its own score).
INFEASIBLE_OFFSET, PRUNED_OFFSET = 2.0, 4.0
PROVISIONAL_STEP = 1e9  # the same order on raw values (a loss, -accuracy, seconds, fractions)


def _tier(state: str, feasible: bool | None) -> int:
    return 2 if state == "PRUNED" else (1 if feasible is False else 0)


def attach(individual, values: Sequence[float] | None, state: str, feasible: bool | None = None) -> float:  # noqa: ANN001
    """Record the outcome on the individual; returns its provisional loss (first objective, with
    infeasible and pruned trials behind every feasible completed one)."""
    setattr(individual, VALUES, tuple(values) if values is not None else None)
    setattr(individual, STATE, state)
    setattr(individual, FEASIBLE, feasible)
    if values is None or state not in ("COMPLETE", "PRUNED") or not all(math.isfinite(v) for v in values):
        return math.inf
    return float(values[0]) + PROVISIONAL_STEP * _tier(state, feasible)


def weights(k: int, n_objectives: int, *, offset: float = 0.0) -> tuple[float, ...]:
    """The k-th weight vector: evenly spread over [0, 1] for two objectives, random on the simplex beyond."""
    if n_objectives == 1:
        return (1.0,)
    if n_objectives == 2:
        t = (offset + k * _GOLDEN) % 1.0
        return (t, 1.0 - t)
    rng = random.Random(k * 1_000_003 + int(offset * 1e6))
    raw = [rng.expovariate(1.0) for _ in range(n_objectives)]
    return tuple(x / sum(raw) for x in raw)


def chebyshev(points: Sequence[tuple[float, ...] | None], states: Sequence[str], w: Sequence[float], *,
              feasible: Sequence[bool | None] | None = None, rho: float = 0.05) -> list[float]:
    """Scores of ``points`` (minimize sense), normalized over the feasible COMPLETE finite ones."""
    feasible = feasible if feasible is not None else [None] * len(points)
    done = [p for p, s, f in zip(points, states, feasible)
            if s == "COMPLETE" and f is not False and p is not None and all(map(math.isfinite, p))]
    m = len(w)
    lo = [min((p[j] for p in done), default=0.0) for j in range(m)]
    hi = [max((p[j] for p in done), default=1.0) for j in range(m)]
    out = []
    for p, s, f in zip(points, states, feasible):
        if p is None or s not in ("COMPLETE", "PRUNED") or not all(map(math.isfinite, p)):
            out.append(math.inf)
            continue
        tier = _tier(s, f)
        n = [(p[j] - lo[j]) / (hi[j] - lo[j]) if hi[j] > lo[j] else 0.0 for j in range(m)]
        # pruned and infeasible values may lie outside that range: clip, their tier sets the order
        n = [min(max(x, 0.0), 1.0) if tier else x for x in n]
        score = max(wj * nj for wj, nj in zip(w, n)) + rho * sum(wj * nj for wj, nj in zip(w, n))
        out.append(score + (0.0, INFEASIBLE_OFFSET, PRUNED_OFFSET)[tier])
    return out


class RescoringPropagator:
    """Wraps a Propulate propagator: rescore copies of the population, then breed from them."""

    def __init__(self, inner, *, n_objectives: int, rank: int, world_size: int) -> None:  # noqa: ANN001
        self.inner, self.n_objectives = inner, n_objectives
        self.rank, self.world_size = rank, world_size
        self.offset = rank / max(1, world_size)  # ranks start at different trade-offs
        self.proposals = 0
        self.last_weights: tuple[float, ...] = ()

    def __call__(self, individuals: list):  # noqa: ANN204
        if self.n_objectives == 1:
            return self.inner(individuals)
        w = weights(self.proposals, self.n_objectives, offset=self.offset)
        self.proposals += 1
        self.last_weights = w
        # shallow copies suffice: Propulate's operators deep-copy a parent before changing it
        scored = [copy.copy(ind) for ind in individuals]
        points = [getattr(ind, VALUES, None) for ind in scored]
        states = [getattr(ind, STATE, "FAILED" if not math.isfinite(ind.loss) else "COMPLETE") for ind in scored]
        feasible = [getattr(ind, FEASIBLE, None) for ind in scored]
        # an individual without recorded values (not ours) keeps its loss as a single objective
        points = [p if p is not None or not math.isfinite(ind.loss) else (ind.loss,) * self.n_objectives
                  for p, ind in zip(points, scored)]
        for ind, s in zip(scored, chebyshev(points, states, w, feasible=feasible)):
            ind.loss = s
        return self.inner(scored)
