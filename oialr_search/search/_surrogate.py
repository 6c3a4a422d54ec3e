"""Surrogate-assisted breeding for the Propulate backend: many children bred, the most promising run.

Propulate breeds one child per evaluation and runs it, whatever it is. At the budgets our users
afford (tens of trials) every evaluation counts, so once an island has its breeding population,
:class:`SurrogatePick` breeds ``candidates`` children with the island's own propagator and returns
the one with the highest expected improvement under a Gaussian process fitted to the island's
evaluated individuals (their working loss, traits scaled to [0, 1] by their limits). The children
are still the evolutionary operators' (selection from the best share, crossover, mutation), so the
search keeps Propulate's character: the surrogate only chooses among them. Before the breeding
population is complete the worker's share of the initial design runs as it is, point by point; after
that share (``design_left``) the island's uniform draws are picked among as its children are.

The losses are rank-transformed to normal scores before the fit: a diverged trial's val_loss is
orders of magnitude above the others and would otherwise flatten the model everywhere else.

Given a ``history`` (the Propulate backend gives ``_study_points``: every finished trial of the study,
on every island, and the trials running now), the model is fitted to that instead of the island's
individuals, and each running trial enters as a placeholder at the model's own prediction (the
"kriging believer" of batch Bayesian optimization): its uncertainty collapses there, so a child next
to a trial another rank is running has little expected improvement left.
"""

from __future__ import annotations

import math
import random
import sys
import warnings
from collections.abc import Callable, Mapping, Sequence

import numpy as np

CANDIDATES = 16  # children bred per evaluation once the breeding population is complete
MAX_POINTS = 128  # the best this many individuals fit the model: its cost grows cubically
_MIN_POINTS = 4  # fewer finite losses than this: no model, the inner propagator's child runs
MAX_PLACEHOLDERS = 64  # running trials the model takes as placeholders (the first this many)

# (traits and working loss of each finished trial, traits of each running one): see ``history``
History = Callable[[], tuple[Sequence[tuple[Mapping, float]], Sequence[Mapping]]]


def _scale(limits: Mapping[str, tuple]) -> Callable[[object], list[float]]:
    """Traits of an individual as a point in the unit cube (ints and category indices alike)."""
    keys = list(limits)

    def point(ind) -> list[float]:  # noqa: ANN001
        out = []
        for key in keys:
            lo, hi = limits[key][0], limits[key][-1]
            out.append((float(ind[key]) - lo) / (hi - lo) if hi != lo else 0.0)
        return out

    return point


def _normal_scores(y: np.ndarray) -> np.ndarray:
    """Ranks mapped onto standard normal quantiles (ties get the mean of their quantiles)."""
    from scipy.stats import norm, rankdata

    return norm.ppf((rankdata(y) - 0.5) / len(y))


def expected_improvement(mean: np.ndarray, sd: np.ndarray, best: float) -> np.ndarray:
    """EI of a minimization below ``best`` for Gaussian predictions (``mean``, ``sd``)."""
    from scipy.stats import norm

    sd = np.maximum(sd, 1e-12)
    z = (best - mean) / sd
    return (best - mean) * norm.cdf(z) + sd * norm.pdf(z)


class SurrogatePick:
    """A Propulate propagator: ``inner``'s most promising child of ``candidates`` (see the module).

    ``inner`` is a :class:`propulate.propagators.Conditional` (its ``pop_size`` says when breeding
    starts); ``rng`` seeds the model's fits, so a seeded search stays reproducible. ``candidates``:
    ``CANDIDATES`` when None (1: no model, Propulate's own breeding). ``idle()``, asked before each
    breeding, says that the rank takes no more trials (the budget is full, or it was preempted or
    closed): Propulate still breeds once per generation it has left, and those proposals are never
    run, so they are bred without the model (a fit costs up to a second). ``history()``: the data to fit
    instead of the island's individuals (see the module); while it fails (a storage error) or has fewer
    points than the island, the island's individuals are used. ``design_left()``: whether the island's
    initial design has points left for this worker; once it has none and the island cannot breed yet,
    its uniform draws are picked among as its children are (without it, they run as drawn)."""

    def __init__(self, inner, limits: Mapping[str, tuple], *, rng: random.Random,  # noqa: ANN001
                 candidates: int | None = None, max_points: int = MAX_POINTS,
                 idle: Callable[[], bool] | None = None, history: History | None = None,
                 design_left: Callable[[], bool] | None = None) -> None:
        candidates = CANDIDATES if candidates is None else candidates
        if candidates < 1:
            raise ValueError(f"candidates must be at least 1, got {candidates}")
        self.inner, self.candidates, self.max_points, self.rng = inner, candidates, max_points, rng
        self.point = _scale(limits)
        self.idle = idle or (lambda: False)
        self.history, self._warned = history, False
        self.design_left = design_left or (lambda: True)

    def __call__(self, individuals: list):  # noqa: ANN204
        if self.candidates == 1 or self.idle() or len(individuals) < self.inner.pop_size and self.design_left():
            return self.inner(individuals)  # the initial design, consumed in order: never bred more than once
        points, running = self._data(individuals)
        if len(points) < _MIN_POINTS:
            return self.inner(individuals)
        children = [self.inner(individuals) for _ in range(self.candidates)]
        scores = self._expected_improvement(points, running, children)
        return children[int(np.argmax(scores))] if scores is not None else children[0]

    def _data(self, individuals: list) -> tuple[list[tuple[Mapping, float]], Sequence[Mapping]]:
        """The best ``max_points`` (traits, loss) to fit, and the running trials' traits."""
        points = [(ind, float(ind.loss)) for ind in individuals if math.isfinite(float(ind.loss))]
        running: Sequence[Mapping] = ()
        if self.history is not None:
            try:
                study, running = self.history()
            except Exception as exc:  # noqa: BLE001 - an error here would end the rank's search, or hang the rest
                from ._objective import while_interrupted

                if while_interrupted(exc):  # Ctrl-C that a library turned into its own error
                    raise KeyboardInterrupt from exc
                if not self._warned:
                    print(f"surrogate: fitting the island's own trials, the study's could not be read "
                          f"({type(exc).__name__}: {exc})", file=sys.stderr, flush=True)
                    self._warned = True
                running = ()
            else:
                if len(study) >= len(points):
                    points = [p for p in study if math.isfinite(p[1])]
        return sorted(points, key=lambda p: p[1])[:self.max_points], running

    def _expected_improvement(self, points: list[tuple[Mapping, float]], running: Sequence[Mapping],
                              children: list) -> np.ndarray | None:
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.gaussian_process import GaussianProcessRegressor
        from sklearn.gaussian_process.kernels import ConstantKernel, Matern, WhiteKernel
        from threadpoolctl import threadpool_limits

        x = np.array([self.point(traits) for traits, _ in points])
        y = _normal_scores(np.array([loss for _, loss in points]))
        kernel = ConstantKernel(1.0, (1e-2, 1e2)) * Matern(np.ones(x.shape[1]), (1e-2, 1e2), nu=2.5) \
            + WhiteKernel(1e-2, (1e-6, 1.0))
        gp = GaussianProcessRegressor(kernel, normalize_y=True, n_restarts_optimizer=1,
                                      random_state=self.rng.randrange(2**31))
        # one BLAS thread: the matrices are small, and the rank's other cores belong to the other ranks
        # (entered outside catch_warnings, which would repeat a warning of its own on every fit)
        with threadpool_limits(limits=1), warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)  # a length scale at its bound is fine here
            try:
                gp.fit(x, y)
                if running:  # placeholders at the model's prediction, with the hyperparameters just fitted; as
                    # observations, so a better prediction there is also the best to improve on
                    placeholders = np.array([self.point(traits) for traits in running[:MAX_PLACEHOLDERS]])
                    y = np.concatenate([y, gp.predict(placeholders)])
                    gp = GaussianProcessRegressor(gp.kernel_, normalize_y=True, optimizer=None)
                    gp.fit(np.vstack([x, placeholders]), y)
                mean, sd = gp.predict(np.array([self.point(c) for c in children]), return_std=True)
            except (ValueError, np.linalg.LinAlgError):
                return None  # a degenerate fit: the first child runs, as without the model
        return expected_improvement(mean, sd, float(y.min()))
