"""What the store hands out: plain, frozen records of studies and trials, built from their rows."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import NamedTuple

from sqlalchemy import select
from sqlalchemy.orm import Session

from ._schema import StudyRow, TrialPayloadRow, TrialRow


@dataclass(frozen=True)
class Study:
    id: int
    name: str
    space: dict
    space_path: str
    metric: str  # the first objective
    direction: str
    backend: str
    seed: int
    budget: int
    created: datetime
    objectives: tuple[dict, ...] = ()  # ({"metric": ..., "direction": ...}, ...), the first is (metric, direction)
    constraints: dict = field(default_factory=dict)  # {metric: {"min": x, "max": y}}

    @property
    def minimize(self) -> bool:
        return self.direction == "minimize"

    @property
    def multi_objective(self) -> bool:
        return len(self.objectives) > 1

    def backends_text(self, proposed: dict[str, int]) -> str:
        """The study's backend, with the backends that proposed its trials (``proposed``: Store.backends)
        where that is not it alone: a job on one rank runs the Optuna fallback, a job may name another
        --backend. E.g. ``propulate (trials by optuna 1, propulate 2)``."""
        if not proposed or set(proposed) == {self.backend}:
            return self.backend
        return f"{self.backend} (trials by {', '.join(f'{b} {n}' for b, n in sorted(proposed.items()))})"


@dataclass(frozen=True)
class Trial:
    id: int
    number: int
    state: str
    rank: int
    island: int | None
    device: str
    params: dict
    value: float | None  # the first objective's value
    metrics: dict | None
    config: dict | None  # None unless loaded with full=True
    rank_trajectory: list | None  # None unless loaded with full=True
    error: str | None
    started: datetime
    finished: datetime | None
    duration: float | None
    values: list | None = None  # one raw value per objective
    feasible: bool | None = None  # None: no constraints were checked (v1 trials, failed trials)
    last_epoch: int | None = None
    crashes: int = 0  # runs of it that died while holding it (see Store.claim_dead)


class Progress(NamedTuple):
    """What :meth:`Store.finished_since` found: trials that finished, those still running, the next watermark."""

    finished: list[Trial]
    running: list[Trial]
    watermark: int


def _study(row: StudyRow) -> Study:
    objectives = tuple(row.objectives or ({"metric": row.metric, "direction": row.direction},))
    return Study(row.id, row.name, row.space, row.space_path, row.metric, row.direction, row.backend, row.seed,
                 row.budget, row.created, objectives, dict(row.constraints or {}))


def _trial(row: TrialRow, payload: TrialPayloadRow | None = None) -> Trial:
    values = row.objective_values if row.objective_values is not None else (
        [row.value] if row.value is not None else None)  # a v1 trial: its single objective
    return Trial(row.id, row.number, row.state, row.rank, row.island, row.device, row.params, row.value, row.metrics,
                 payload.config if payload else None, payload.rank_trajectory if payload else None, row.error,
                 row.started, row.finished, row.duration, values, row.feasible, row.last_epoch, row.crashes or 0)


def _trials(s: Session, rows: list[TrialRow], *, full: bool) -> list[Trial]:
    """Trials from rows; ``full`` also loads their configs and rank trajectories (one query)."""
    if not full:
        return [_trial(r) for r in rows]
    ids = [r.id for r in rows]
    payloads = {p.trial_id: p for p in s.scalars(select(TrialPayloadRow).where(TrialPayloadRow.trial_id.in_(ids)))} \
        if ids else {}
    return [_trial(r, payloads.get(r.id)) for r in rows]
