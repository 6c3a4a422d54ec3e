"""Optuna backend: TPE in every process, sharing trials through our database.

Each process keeps an in-memory Optuna study and, before every ask, adds the trials that other
ranks finished since (read from our store). Nothing waits on Optuna's RDB locks (which kept 8
workers on one SQLite file only 54% busy), it works with and without MPI, and a resume just
rebuilds the study from the database.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from ..storage import COMPLETE, FAILED, INTERRUPTED, Store, Study
from ._space import Dimension, SearchSpace


def _distribution(d: Dimension):  # noqa: ANN202
    import optuna

    if d.kind == "categorical":
        return optuna.distributions.CategoricalDistribution(list(d.choices))
    if d.kind == "int":
        return optuna.distributions.IntDistribution(int(d.low), int(d.high), log=d.log)
    return optuna.distributions.FloatDistribution(float(d.low), float(d.high), log=d.log)


def run_optuna(*, space: SearchSpace, store: Store, study: Study, seed: int, rank: int,
               evaluate: Callable[[dict], tuple[int, str, float | None] | None]) -> None:
    """Ask, evaluate, tell until ``evaluate`` finds the budget used up (returns None).

    ``evaluate(params)`` claims a slot in the store, trains, stores, and returns
    (stored trial id, state, value).
    """
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    dists = {d.key: _distribution(d) for d in space.dimensions}
    sampler = optuna.samplers.TPESampler(seed=seed * 7919 + rank, n_startup_trials=5, multivariate=True)
    ostudy = optuna.create_study(direction=study.direction, sampler=sampler)
    seen, own = 0, set()

    while True:
        for t in store.trials(study, states=(COMPLETE, FAILED, INTERRUPTED), after_id=seen):
            seen = max(seen, t.id)
            if t.id in own or set(t.params) != set(dists):
                continue
            ok = t.state == COMPLETE and t.value is not None and math.isfinite(t.value)
            try:
                ostudy.add_trial(optuna.trial.create_trial(
                    params=t.params, distributions=dists, value=t.value if ok else None,
                    state=optuna.trial.TrialState.COMPLETE if ok else optuna.trial.TrialState.FAIL))
            except ValueError:
                continue  # a value outside the current space (the space was edited before a resume)
        trial = ostudy.ask(dists)
        result = evaluate(dict(trial.params))
        if result is None:
            ostudy.tell(trial, state=optuna.trial.TrialState.FAIL)
            return
        trial_id, state, value = result
        own.add(trial_id)
        if state == COMPLETE and value is not None and math.isfinite(value):
            ostudy.tell(trial, value)
        else:
            ostudy.tell(trial, state=optuna.trial.TrialState.FAIL)
