"""Hyperparameter search: spaces, the trial objective, device placement, backends and the runner."""

from ._devices import Placement, place
from ._objective import TrialOutcome, run_trial
from ._runner import BACKENDS, SearchRequest, run_search
from ._space import Dimension, SearchSpace, SpaceError, load_space

__all__ = [
    "BACKENDS",
    "Dimension",
    "Placement",
    "SearchRequest",
    "SearchSpace",
    "SpaceError",
    "TrialOutcome",
    "load_space",
    "place",
    "run_search",
    "run_trial",
]
