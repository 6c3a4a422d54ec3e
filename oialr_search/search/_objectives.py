"""Objectives and constraints of a study: which metrics, which direction, what is feasible.

The database always holds raw metric values; the helpers here turn them into the minimize-sense
vectors that the Pareto front, the pruners and the Propulate scalarization compare.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

# Every metric a trial reports, with its natural direction. All are also reported after every epoch
# (train_seconds as the running total), so every objective can be pruned on.
METRICS: dict[str, str] = {
    "val_loss": "minimize",
    "top1": "maximize",
    "top5": "maximize",
    "trainable_fraction": "minimize",
    "compression": "minimize",
    "train_seconds": "minimize",
}


@dataclass(frozen=True)
class Objective:
    metric: str
    direction: str

    @property
    def minimize(self) -> bool:
        return self.direction == "minimize"

    def to_min(self, value: float | None) -> float:
        """The value in minimize sense; missing or NaN values are +inf (worse than anything)."""
        if value is None or not math.isfinite(value):
            return math.inf
        return float(value) if self.minimize else -float(value)

    def to_dict(self) -> dict:
        return {"metric": self.metric, "direction": self.direction}


@dataclass(frozen=True)
class Constraint:
    """``low <= metric <= high`` (either bound may be None)."""

    metric: str
    low: float | None = None
    high: float | None = None

    def holds(self, value: float | None) -> bool:
        if value is None or not math.isfinite(value):
            return False
        return (self.low is None or value >= self.low) and (self.high is None or value <= self.high)

    def to_dict(self) -> dict:
        return {k: v for k, v in (("min", self.low), ("max", self.high)) if v is not None}


def objectives_from(rows: Sequence[Mapping]) -> tuple[Objective, ...]:
    return tuple(Objective(r["metric"], r["direction"]) for r in rows)


def objective_values(metrics: Mapping, objectives: Sequence[Objective]) -> list[float | None]:
    """The raw value of every objective in ``metrics`` (None where missing)."""
    out = []
    for o in objectives:
        v = metrics.get(o.metric)
        out.append(float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None)
    return out


def minimize_sense(values: Sequence[float | None], objectives: Sequence[Objective]) -> tuple[float, ...]:
    return tuple(o.to_min(v) for o, v in zip(objectives, values, strict=True))


def feasible(metrics: Mapping, constraints: Sequence[Constraint]) -> bool:
    return all(c.holds(metrics.get(c.metric)) for c in constraints)


@dataclass(frozen=True)
class Scored:
    """A trial's outcome as stored: its state, one raw value per objective, feasibility, error, and for
    a PRUNED trial the epoch it stopped at (its values are that epoch's)."""

    state: str
    values: list[float | None] | None
    feasible: bool | None
    error: str | None
    stopped_at: int | None = None

    def minimized(self, objectives: Sequence[Objective]) -> tuple[float, ...] | None:
        return minimize_sense(self.values, objectives) if self.values is not None else None


def score(state: str, metrics: Mapping | None, error: str | None, objectives: Sequence[Objective],
          constraints: Sequence[Constraint]) -> Scored:
    """Read the objectives from a trial's metrics. A COMPLETE trial with a missing or non-finite
    objective becomes FAILED (a NaN would corrupt every sampler's model); PRUNED keeps what it reached."""
    if state not in ("COMPLETE", "PRUNED") or metrics is None:
        return Scored(state, None, None, error)
    values = objective_values(metrics, objectives)
    bad = [(o.metric, v) for o, v in zip(objectives, values) if v is None or not math.isfinite(v)]
    if bad and state == "COMPLETE":
        return Scored("FAILED", values, None, f"objective {bad[0][0]} is {bad[0][1]}")
    # feasibility is judged on the final metrics only (a pruned trial's last epoch says little of it)
    return Scored(state, values, feasible(metrics, constraints) if state == "COMPLETE" else None, error)
