"""An in-memory Optuna study built from our store, for ``optuna.visualization.matplotlib``.

The trials are converted as the Optuna backend feeds TPE (``_frozen``: values, state, constraints from the
study's bounds), with the distributions of the study's search space, so the history, parallel-coordinate
and importance figures see the stored results (the GP sampler is also given pruned trials projected to the
end of training, which these figures leave out).
"""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path
from typing import Any

from ..exceptions import OIALRSearchError
from ..search import Constraint, SearchSpace
from ..search._objectives import objectives_from
from ..search._optuna_backend import _distribution, _frozen
from ..search._space import _dimension
from ..storage import COMPLETE, FAILED, PRUNED, Store, Study, Trial


def _space(study: Study) -> SearchSpace:
    """The study's search space as stored. A space that no longer validates (a config key renamed by a
    later release) still gives its dimensions, objectives and constraints, which is all a figure needs."""
    try:
        return SearchSpace.from_dict(study.space)
    except (OIALRSearchError, KeyError, TypeError):
        raw = study.space.get("raw") or {}
        path = Path(study.space.get("path") or study.space_path)
        dims = [_dimension(path, str(k), v) for k, v in (raw.get("params") or {}).items()]
        constraints = tuple(Constraint(m, b.get("min"), b.get("max")) for m, b in study.constraints.items())
        return SearchSpace(str(path), {}, dims, objectives_from(study.objectives), constraints)


def optuna_study(store: Store, study: Study, *, objective: int | None = None, trials: list[Trial] | None = None
                 ) -> Any:  # noqa: ANN401 - an optuna.Study (imported lazily)
    """Every trial of ``study`` in a new in-memory Optuna study, trial k being our trial number k.

    ``objective=None``: all the study's objectives; ``objective=j``: a single-objective study of objective
    j, whose history Optuna draws with a best-so-far line. A trial whose params do not fit the space (edited
    before a resume), a RUNNING or INTERRUPTED one, and any gap in the numbering become parameterless FAIL
    trials, so Optuna's trial numbers stay ours (its history plot indexes values by trial number).
    """
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = _space(study)
    if objective is not None:
        space = dataclasses.replace(space, objectives=(space.objectives[objective],))
    dists = {d.key: _distribution(d) for d in space.dimensions}
    out = optuna.create_study(directions=[o.direction for o in space.objectives])
    frozen = []
    for t in trials if trials is not None else store.trials(study):
        while len(frozen) < t.number:  # a gap in the numbering
            frozen.append(optuna.trial.create_trial(state=optuna.trial.TrialState.FAIL))
        if objective is not None and t.values is not None:
            t = dataclasses.replace(t, values=[t.values[objective]] if objective < len(t.values) else None)
        made = None
        if t.state in (COMPLETE, PRUNED, FAILED) and set(t.params) == set(dists):
            try:
                made = _frozen(t, dists, space)
            except ValueError:
                made = None  # a value outside the space's current range
        frozen.append(made or optuna.trial.create_trial(state=optuna.trial.TrialState.FAIL))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # add_trials is stable, but keep experimental-feature chatter out
        out.add_trials(frozen)
    return out
