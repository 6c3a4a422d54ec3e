"""Optuna backend: a sampler in every process, sharing trials through our database.

Each process keeps an in-memory Optuna study and, before every ask, adds the trials that finished
since its last look, read from our store by a watermark (the lowest id still running), so a trial
that finishes after a later-numbered one still reaches every sampler. Nothing waits on Optuna's RDB
locks (which kept 8 workers on one SQLite file only 54% busy), it works with and without MPI, and a
resume just rebuilds the study from the database.

Multi-objective studies use Optuna's native support (TPE by default, NSGA-II with ``sampler:
nsga2``); constraints reach the sampler through each trial's constraints (Optuna 5's ``set_constraint``);
a pruned trial is told PRUNED, with its value at the epoch it stopped at as its last intermediate value
(single-objective), which is what TPE ranks pruned trials by: the later they stopped, then the better
that value (without it, every pruned trial tied). A trial another job's start marked INTERRUPTED while
it still ran (two jobs on one study) is looked at again, and added once it has a result.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from ..storage import COMPLETE, FAILED, INTERRUPTED, PRUNED, Store, Study, Trial
from ._dimension import Dimension
from ._objectives import Constraint, Scored
from ._space import SearchSpace


def _distribution(d: Dimension):  # noqa: ANN202
    import optuna

    if d.kind == "categorical":
        return optuna.distributions.CategoricalDistribution(list(d.choices))
    if d.kind == "int":
        return optuna.distributions.IntDistribution(int(d.low), int(d.high), log=d.log)
    return optuna.distributions.FloatDistribution(float(d.low), float(d.high), log=d.log)


def _violations(metrics: dict | None, constraints: Sequence[Constraint]) -> list[float]:
    """Optuna's convention: one number per bound, > 0 by how much it is violated."""
    out = []
    for c in constraints:
        v = (metrics or {}).get(c.metric)
        if v is None or not math.isfinite(v):
            out.append(1.0)
            continue
        if c.low is not None:
            out.append(c.low - v)
        if c.high is not None:
            out.append(v - c.high)
    return out


def make_sampler(space: SearchSpace, seed: int):  # noqa: ANN201
    import optuna

    spec = space.sampler
    if spec["type"] == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if spec["type"] == "nsga2":  # constraints reach NSGA-II and TPE through each trial's set_constraint
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=spec.get("population_size", 8))
    # multivariate TPE models the dimensions jointly; few startup trials because our budgets are tens
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=spec.get("startup_trials", 5), multivariate=True)


def _frozen(t: Trial, dists: dict, space: SearchSpace):  # noqa: ANN202
    import optuna

    n = len(space.objectives)
    ok = t.state == COMPLETE and t.values is not None and len(t.values) == n and \
        all(v is not None and math.isfinite(v) for v in t.values)
    extra = {}
    if space.constraints:
        extra = {"constraints": {f"c{i}": v for i, v in enumerate(_violations(t.metrics, space.constraints))}}
    if ok:
        return optuna.trial.create_trial(params=t.params, distributions=dists, values=list(t.values),
                                         state=optuna.trial.TrialState.COMPLETE, **extra)
    if t.state == PRUNED:
        steps = _last_step(t.last_epoch, t.values, n)
        return optuna.trial.create_trial(params=t.params, distributions=dists, state=optuna.trial.TrialState.PRUNED,
                                         intermediate_values=steps, **extra)
    return optuna.trial.create_trial(params=t.params, distributions=dists, state=optuna.trial.TrialState.FAIL,
                                     **extra)


def _last_step(epoch: int | None, values: Sequence[float | None] | None, objectives: int) -> dict[int, float]:
    """A pruned trial's intermediate values for Optuna: {stop epoch: its value then}; none for several
    objectives (Optuna keeps intermediate values for single-objective studies only) or without a
    finite value."""
    if objectives != 1 or epoch is None or not values or values[0] is None or not math.isfinite(values[0]):
        return {}
    return {int(epoch): float(values[0])}


DROPPED = object()  # what ``evaluate`` returns for a trial that ran but was not stored (see run_optuna)


def run_optuna(*, space: SearchSpace, store: Store, study: Study, seed: int, rank: int,
               evaluate: Callable[[dict], tuple[Trial, Scored, dict | None] | None],
               resume: Callable[[], bool] | None = None, enqueue: Sequence[dict] = (),
               ready: Callable[[], None] | None = None) -> None:
    """Ask, evaluate, tell until ``evaluate`` finds the budget used up (returns None).

    ``evaluate(params)`` claims a slot in the store, trains, stores, and returns (the stored trial,
    its scored outcome, its metrics), None when there is nothing more to do, or ``DROPPED``.
    ``resume()``: run a trial of a dead job if there is one (True): it is not asked for, and reaches the
    sampler through the store like every other finished trial.
    ``enqueue``: parameter sets to try first (rank 0 only).
    """
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    dists = {d.key: _distribution(d) for d in space.dimensions}
    directions = [o.direction for o in space.objectives]
    sampler = make_sampler(space, (seed * 7919 + rank) % 2**32)  # numpy's RandomState takes [0, 2³²)
    ostudy = optuna.create_study(directions=directions, sampler=sampler)
    pending = list(enqueue)  # enqueued after the first sync, so a resume does not try them again
    seen: set[int] = set()
    interrupted: dict[int, int] = {}  # id -> number of trials that may still get a result
    watermark = 0
    if ready is not None:
        ready()
    while True:
        finished, watermark = store.finished_since(study, watermark)
        if interrupted:
            finished += store.trials_numbered(study, list(interrupted.values()))
        for t in finished:
            if t.state == INTERRUPTED:
                interrupted.setdefault(t.id, t.number)
                continue
            interrupted.pop(t.id, None)
            if t.id in seen:
                continue
            seen.add(t.id)
            if set(t.params) != set(dists) or t.state not in (COMPLETE, FAILED, PRUNED):
                continue
            try:
                ostudy.add_trial(_frozen(t, dists, space))
            except ValueError:
                continue  # a value outside the current space (the space was edited before a resume)
        if resume is not None and resume():
            continue
        for params in pending:
            ostudy.enqueue_trial(params, skip_if_exists=True)
        pending = []
        trial = ostudy.ask(dists)
        result = evaluate(dict(trial.params))
        if result is DROPPED:  # not stored this time (it is resumed later): ask again
            ostudy.tell(trial, state=optuna.trial.TrialState.FAIL)
            continue
        if result is None:
            ostudy.tell(trial, state=optuna.trial.TrialState.FAIL)
            return
        stored, scored, metrics = result
        seen.add(stored.id)
        for i, v in enumerate(_violations(metrics, space.constraints)):
            trial.set_constraint(f"c{i}", v)
        if scored.state == COMPLETE:
            ostudy.tell(trial, list(scored.values))
        elif scored.state == PRUNED:
            for step, value in _last_step(scored.stopped_at, scored.values, len(directions)).items():
                trial.report(value, step)
            ostudy.tell(trial, state=optuna.trial.TrialState.PRUNED)
        else:
            ostudy.tell(trial, state=optuna.trial.TrialState.FAIL)
