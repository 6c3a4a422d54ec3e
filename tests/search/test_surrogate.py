"""SurrogatePick: the Propulate backend runs the most promising of several bred children."""

import math
import random

import numpy as np
import pytest
from scipy.stats import norm

from oialr_search.search._surrogate import SurrogatePick, _normal_scores, expected_improvement

LIMITS = {"p0": (0.0, 1.0), "p1": (0, 4)}


class Ind(dict):
    def __init__(self, p0: float, p1: int = 2, loss: float = math.nan) -> None:
        super().__init__(p0=p0, p1=p1)
        self.loss = loss


class Inner:
    """A Conditional's stand-in: breeds the next of ``children``, counting its calls."""

    def __init__(self, children: list, pop_size: int = 4) -> None:
        self.children, self.pop_size, self.calls = list(children), pop_size, 0

    def __call__(self, individuals: list):
        self.calls += 1
        return self.children.pop(0)


def population(xs, f=lambda x: (x - 0.3) ** 2):
    return [Ind(x, loss=f(x)) for x in xs]


def test_the_initial_design_runs_as_bred():
    inner = Inner([Ind(0.5)], pop_size=4)
    child = SurrogatePick(inner, LIMITS, rng=random.Random(0))(population([0.1, 0.9, 0.5]))
    assert child["p0"] == 0.5 and inner.calls == 1  # a design point is never bred twice


def test_the_child_the_model_expects_best_runs():
    pop = population(np.linspace(0, 1, 12))
    children = [Ind(x) for x in (0.95, 0.7, 0.31, 0.05, 0.55, 0.85)]
    inner = Inner(children, pop_size=4)
    child = SurrogatePick(inner, LIMITS, rng=random.Random(0), candidates=6)(pop)
    assert inner.calls == 6
    assert child["p0"] == 0.31  # the minimum of (x - 0.3)^2 among the candidates


def test_diverged_and_failed_trials_do_not_fit_the_model():
    # the infinite loss is left out; the huge one only ranks last (normal scores), so 0.31 still wins
    pop = population(np.linspace(0, 1, 10)) + [Ind(0.5, loss=math.inf), Ind(0.6, loss=1e9)]
    inner = Inner([Ind(x) for x in (0.9, 0.31, 0.6)], pop_size=4)
    assert SurrogatePick(inner, LIMITS, rng=random.Random(0), candidates=3)(pop)["p0"] == 0.31


def test_too_few_finite_losses_give_the_first_child_without_breeding_more():
    pop = [Ind(0.1, loss=0.2), Ind(0.2, loss=0.1), Ind(0.3, loss=0.3)] + [Ind(0.5, loss=math.inf)] * 3
    inner = Inner([Ind(0.7), Ind(0.31)], pop_size=4)
    child = SurrogatePick(inner, LIMITS, rng=random.Random(0), candidates=2)(pop)
    assert child["p0"] == 0.7 and inner.calls == 1


def test_the_pick_is_reproducible_under_a_seed():
    def pick(seed: int) -> float:
        rng = np.random.default_rng(1)
        pop = [Ind(float(x), int(k), float(x - 0.3) ** 2 + 0.1 * k) for x, k in
               zip(rng.random(15), rng.integers(0, 5, 15), strict=True)]
        children = [Ind(float(x), int(k)) for x, k in zip(rng.random(8), rng.integers(0, 5, 8), strict=True)]
        return SurrogatePick(Inner(children), LIMITS, rng=random.Random(seed), candidates=8)(pop)["p0"]

    assert pick(3) == pick(3)


def test_expected_improvement_matches_its_closed_form():
    mean, sd, best = np.array([0.0, 1.0, 2.0]), np.array([1.0, 0.5, 2.0]), 1.0
    z = (best - mean) / sd
    assert expected_improvement(mean, sd, best) == pytest.approx((best - mean) * norm.cdf(z) + sd * norm.pdf(z))
    assert expected_improvement(np.array([0.5]), np.array([0.0]), 1.0) == pytest.approx([0.5])  # a sure gain


def test_normal_scores_keep_the_order_and_ignore_how_far_an_outlier_is():
    a = _normal_scores(np.array([0.3, 0.1, 0.2, 5.0]))
    b = _normal_scores(np.array([0.3, 0.1, 0.2, 5e9]))
    assert list(np.argsort(a)) == [1, 2, 0, 3] and a == pytest.approx(b)


def test_candidates_must_be_positive():
    with pytest.raises(ValueError, match="candidates must be at least 1"):
        SurrogatePick(Inner([]), LIMITS, rng=random.Random(0), candidates=0)
