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
island that receives them. With one objective the provisional loss (the value, PRUNED trials
pushed behind every completed one) already is the ranking, so nothing is rescored. PRUNED trials
rank after every completed one (by the value they reached), failed ones are +inf.
"""

from __future__ import annotations

import copy
import math
import random
from collections.abc import Sequence

VALUES, STATE = "oialr_values", "oialr_state"  # attributes set on Propulate individuals
_GOLDEN = (math.sqrt(5) - 1) / 2
PRUNED_OFFSET = 2.0  # above any completed score, which lies in [0, 1 + rho]
PROVISIONAL_PRUNED_OFFSET = 1e9  # behind any completed raw value (a loss, -accuracy, seconds, fractions)


def attach(individual, values: Sequence[float] | None, state: str) -> float:  # noqa: ANN001
    """Record the outcome on the individual; returns its provisional loss (first objective)."""
    setattr(individual, VALUES, tuple(values) if values is not None else None)
    setattr(individual, STATE, state)
    if values is None or state not in ("COMPLETE", "PRUNED") or not all(math.isfinite(v) for v in values):
        return math.inf
    return float(values[0]) + (PROVISIONAL_PRUNED_OFFSET if state == "PRUNED" else 0.0)


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
              rho: float = 0.05) -> list[float]:
    """Scores of ``points`` (minimize sense), normalized over the COMPLETE finite ones."""
    done = [p for p, s in zip(points, states) if s == "COMPLETE" and p is not None and all(map(math.isfinite, p))]
    m = len(w)
    lo = [min((p[j] for p in done), default=0.0) for j in range(m)]
    hi = [max((p[j] for p in done), default=1.0) for j in range(m)]
    out = []
    for p, s in zip(points, states):
        if p is None or s not in ("COMPLETE", "PRUNED") or not all(map(math.isfinite, p)):
            out.append(math.inf)
            continue
        n = [(p[j] - lo[j]) / (hi[j] - lo[j]) if hi[j] > lo[j] else 0.0 for j in range(m)]
        # pruned values may lie outside the completed range: clip, their order is set by the offset
        n = [min(max(x, 0.0), 1.0) if s == "PRUNED" else x for x in n]
        score = max(wj * nj for wj, nj in zip(w, n)) + rho * sum(wj * nj for wj, nj in zip(w, n))
        out.append(score + (PRUNED_OFFSET if s == "PRUNED" else 0.0))
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
        # an individual without recorded values (not ours) keeps its loss as a single objective
        points = [p if p is not None or not math.isfinite(ind.loss) else (ind.loss,) * self.n_objectives
                  for p, ind in zip(points, scored)]
        for ind, s in zip(scored, chebyshev(points, states, w)):
            ind.loss = s
        return self.inner(scored)
