"""The Optuna backend's samplers, from a space's ``sampler:`` entry.

``auto`` (the default) is Gaussian-process Bayesian optimization (Optuna's GPSampler: a Matérn-5/2
GP with one length scale per dimension, log expected improvement; log expected hypervolume
improvement with several objectives; the constraints' feasibility folded in) until the sampler has
learned from ``GP_TRIALS`` completed trials, and multivariate TPE after that. At the budgets our users
can afford, tens of trials, the GP is the better model: on the digits task (bench/search_quality.py,
2 ranks, 10 seeds) its best val_loss at 24 trials was 0.184 against TPE's 0.199 and random search's
0.213 (README, "Backends"). Its cost grows with the trials it fits (about 0.1 s per proposal at 50
trials, 0.4 s at 200 on one core here, and cubic beyond); TPE's stays at milliseconds, so long studies
go on with TPE. The switch happens between proposals, never inside one.

Two things the GP needs that TPE does not (``gp_trials``): it ignores PRUNED trials, so the
backend gives it a pruned trial as completed with its projection to the end of training (as Propulate
gets it, see ``_projection``); and it spreads the proposals of parallel workers apart only where it
knows their running trials (q-batch expected improvement), so the backend adds the other processes'
running trials to its study while they run.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import optuna  # this module is imported only when the Optuna backend runs (see _optuna_backend)

GP_TRIALS = 200  # the auto sampler's switch from the GP to TPE, in completed trials learned from
STARTUP_TRIALS = 5  # random proposals before a model is fitted: our budgets are tens of trials


def gp_trials(sampler: optuna.samplers.BaseSampler) -> float:
    """Up to how many completed trials ``sampler``'s proposals are the GP's, which wants other workers'
    running trials and projected pruned ones (see the module doc): 0 for samplers without one."""
    if isinstance(sampler, AutoSampler):
        return sampler.gp_trials
    return math.inf if isinstance(sampler, optuna.samplers.GPSampler) else 0


def make_sampler(spec: dict, seed: int) -> optuna.samplers.BaseSampler:
    """The Optuna sampler for a parsed ``sampler:`` entry (``{"type": ..., options}``)."""
    startup = spec.get("startup_trials", STARTUP_TRIALS)
    if spec["type"] == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if spec["type"] == "nsga2":  # constraints reach every sampler through each trial's set_constraint
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=spec.get("population_size", 8))
    if spec["type"] == "gp":
        return _gp(seed, startup)
    # multivariate TPE models the dimensions jointly
    tpe = optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup, multivariate=True)
    if spec["type"] == "tpe":
        return tpe
    return AutoSampler(gp=_gp(seed, startup), tpe=tpe, gp_trials=GP_TRIALS)


def _gp(seed: int, startup: int) -> optuna.samplers.GPSampler:
    # no warning per proposal for a conditional or changed dimension it leaves to its random sampler
    return optuna.samplers.GPSampler(seed=seed, n_startup_trials=startup, warn_independent_sampling=False)


class AutoSampler(optuna.samplers.BaseSampler):
    """``gp`` until the study holds ``gp_trials`` completed trials, ``tpe`` after (see the module doc)."""

    def __init__(self, *, gp: optuna.samplers.BaseSampler, tpe: optuna.samplers.BaseSampler, gp_trials: int) -> None:
        self._gp, self._tpe, self._gp_trials = gp, tpe, gp_trials
        self._current = gp

    @property
    def current(self) -> optuna.samplers.BaseSampler:
        """The sampler of the trial being proposed (or of the last one)."""
        return self._current

    @property
    def gp_trials(self) -> int:
        return self._gp_trials

    def before_trial(self, study, trial) -> None:  # noqa: ANN001
        done = len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)))
        self._current = self._gp if done < self._gp_trials else self._tpe
        self._current.before_trial(study, trial)

    def infer_relative_search_space(self, study, trial) -> dict:  # noqa: ANN001
        return self._current.infer_relative_search_space(study, trial)

    def sample_relative(self, study, trial, search_space: dict) -> dict:  # noqa: ANN001
        return self._current.sample_relative(study, trial, search_space)

    def sample_independent(self, study, trial, param_name: str, param_distribution) -> Any:  # noqa: ANN001
        return self._current.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(self, study, trial, state, values: Sequence[float] | None) -> None:  # noqa: ANN001
        self._current.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self._gp.reseed_rng()
        self._tpe.reseed_rng()
