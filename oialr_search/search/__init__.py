"""Hyperparameter search: spaces, objectives, pruners, the trial objective, device placement,
backends, the runner and the queries over a study's results."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

if TYPE_CHECKING:  # the public names; at run time each is imported from its module on first use (_lazy)
    from ._devices import Placement, place, threads_for
    from ._dimension import Dimension
    from ._front import pareto_front, pick
    from ._objective import TrialOutcome, run_trial
    from ._objectives import METRICS, Constraint, Objective, Scored, score
    from ._pareto import Condition, PickError, dominates, hypervolume, non_dominated, parse_pick
    from ._runner import BACKENDS, SearchRequest, run_search
    from ._space import OverrideError, SearchSpace, SpaceError, load_space, merge_overrides
    from .pruners import ASHAPruner, BasePruner, MedianPruner, NopPruner, create_pruner

__all__ = [
    "ASHAPruner",
    "BACKENDS",
    "BasePruner",
    "Condition",
    "Constraint",
    "Dimension",
    "METRICS",
    "MedianPruner",
    "NopPruner",
    "Objective",
    "OverrideError",
    "PickError",
    "Placement",
    "Scored",
    "SearchRequest",
    "SearchSpace",
    "SpaceError",
    "TrialOutcome",
    "create_pruner",
    "dominates",
    "hypervolume",
    "load_space",
    "merge_overrides",
    "non_dominated",
    "pareto_front",
    "parse_pick",
    "pick",
    "place",
    "run_search",
    "run_trial",
    "score",
    "threads_for",
]

__getattr__, __dir__ = lazy_exports(__name__, __file__)
