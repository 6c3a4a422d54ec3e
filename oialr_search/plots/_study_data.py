"""Plain data behind a study's figures and report, read from the store."""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..exceptions import OIALRSearchError
from ..search._objectives import objectives_from
from ..search._pareto import non_dominated
from ..storage import COMPLETE, PRUNED, Store, Study, Trial
from ._data import Curve, RunData, _number, curve_from_epochs, run_data


class PlotError(OIALRSearchError):
    """A study or an output path that figures or a report cannot be made from (the message says why)."""


@dataclass(frozen=True)
class TrialSummary:
    """One trial as the study figures see it."""

    number: int
    state: str
    values: tuple[float | None, ...]  # the raw value of each objective (() when none was stored)
    feasible: bool | None
    trainable_fraction: float | None  # from the trial's final (or, pruned, last reported) metrics
    last_epoch: int | None
    params: dict
    error: str | None  # the first line of the stored error


def first_line(text: str | None) -> str | None:
    """The first non-empty line of a stored error (its full traceback stays in the database)."""
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    return lines[0] if lines else None


def summarize(trial: Trial) -> TrialSummary:
    return TrialSummary(trial.number, trial.state, tuple(_number(v) for v in trial.values or ()), trial.feasible,
                        _number((trial.metrics or {}).get("trainable_fraction")), trial.last_epoch,
                        dict(trial.params or {}), first_line(trial.error))


def summaries(store: Store, study: Study) -> list[TrialSummary]:
    """Every trial of the study, by number (light: no configs or trajectories)."""
    return [summarize(t) for t in store.trials(study)]


def require_completed(study: Study, rows: list[TrialSummary]) -> None:
    """Figures need at least one completed trial: say so, in one line, before anything is written."""
    if not any(r.state == COMPLETE for r in rows):
        states = ", ".join(f"{n} {s.lower()}" for s, n in _counts(rows).items()) or "no trials"
        raise PlotError(f"study {study.name!r} has no completed trial yet ({states}); nothing to plot")


def _counts(rows: list[TrialSummary]) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in rows:
        out[r.state] = out.get(r.state, 0) + 1
    return out


def state_counts(rows: list[TrialSummary]) -> dict[str, int]:
    """Trials per state, in the order COMPLETE, PRUNED, FAILED, RUNNING, INTERRUPTED (only those present)."""
    counts = _counts(rows)
    order = ["COMPLETE", "PRUNED", "FAILED", "RUNNING", "INTERRUPTED"]
    return {s: counts[s] for s in order + sorted(set(counts) - set(order)) if s in counts}


@dataclass(frozen=True)
class TradeOff:
    """The first objective against the trainable fraction, over the COMPLETE trials.

    ``front``: the feasible trials that no other feasible one beats in both (first objective in its
    direction, trainable fraction down), ordered by trainable fraction. When the study's objectives are
    exactly these two it is the study's Pareto front.
    """

    metric: str
    direction: str
    numbers: list[int]
    x: list[float]  # trainable fraction
    y: list[float]  # the first objective's raw value
    feasible: list[bool]
    front: list[int]
    study_front: bool  # whether ``front`` is the study's own Pareto front
    x_bounds: tuple[float | None, float | None] = (None, None)  # the study's constraint on each, (min, max)
    y_bounds: tuple[float | None, float | None] = (None, None)


def trade_off(study: Study, rows: list[TrialSummary]) -> TradeOff:
    """The trade-off of the completed trials that have both values (finite)."""
    first = objectives_from(study.objectives)[0]
    points = [(r.number, r.trainable_fraction, r.values[0], r.feasible is not False) for r in rows
              if r.state == COMPLETE and r.values and r.values[0] is not None and r.trainable_fraction is not None]
    feasible = [p for p in points if p[3]]
    best = non_dominated([(first.to_min(p[2]), p[1]) for p in feasible])
    front = sorted((feasible[i] for i in best), key=lambda p: (p[1], first.to_min(p[2]), p[0]))
    metrics = [o["metric"] for o in study.objectives]

    def bounds(metric: str) -> tuple[float | None, float | None]:
        b = study.constraints.get(metric) or {}
        return b.get("min"), b.get("max")

    return TradeOff(first.metric, first.direction, [p[0] for p in points], [p[1] for p in points],
                    [p[2] for p in points], [p[3] for p in points], [p[0] for p in front],
                    sorted(metrics) == sorted([first.metric, "trainable_fraction"]) and len(metrics) == 2,
                    bounds("trainable_fraction"), bounds(first.metric))


def learning_curves(store: Store, study: Study) -> list[Curve]:
    """The per-epoch values of every trial that reported an epoch, by number."""
    out, reported = [], store.study_epochs(study)
    for t in store.trials(study):
        epochs = reported.get(t.id)
        if epochs:
            out.append(curve_from_epochs(f"trial {t.number}", t.state, epochs, number=t.number))
    return out


def best_numbers(study: Study, rows: list[TrialSummary], top: int) -> list[int]:
    """The ``top`` best feasible COMPLETE trials by the first objective (ties by number); in a multi-objective
    study the members of its Pareto front come first, so the figures show the front's trade-offs."""
    first = objectives_from(study.objectives)[0]
    ranked = sorted((r for r in rows if r.state == COMPLETE and r.feasible is not False and r.values
                     and r.values[0] is not None), key=lambda r: (first.to_min(r.values[0]), r.number))
    if study.multi_objective:  # several objectives: members of the study's own front come first
        minimized = [tuple(o.to_min(v) for o, v in zip(objectives_from(study.objectives), r.values))
                     if len(r.values) == len(study.objectives) else (math.inf,) for r in ranked]
        on_front = {ranked[i].number for i in non_dominated(minimized)} if ranked else set()
        ranked = [r for r in ranked if r.number in on_front] + [r for r in ranked if r.number not in on_front]
    return [r.number for r in ranked[:max(top, 0)]]


def best_runs(store: Store, study: Study, numbers: list[int]) -> list[RunData]:
    """The OIALR data (curves and rank trajectory) of the given trials."""
    out = []
    for n in numbers:
        t = store.get_trial(study, n, full=True)
        out.append(run_data(f"trial {n}", t.state, store.epochs(t.id), t.rank_trajectory, number=n))
    return out


def pruned_values(rows: list[TrialSummary], j: int) -> tuple[list[int], list[float]]:
    """(numbers, value of objective ``j``) of the PRUNED trials: what each reached at its last epoch."""
    pts = [(r.number, r.values[j]) for r in rows if r.state == PRUNED and len(r.values) > j
           and r.values[j] is not None]
    return [n for n, _ in pts], [v for _, v in pts]
