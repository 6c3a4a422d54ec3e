"""Propulate breeds from the best share of its island's population (search/_selection.py)."""

import random

import pytest

from oialr_search.search._selection import SelectBestShare


class _Ind:
    def __init__(self, loss):
        self.loss = loss


def _population(n, seed=0):
    rng = random.Random(seed)
    return [_Ind(rng.random()) for _ in range(n)]


@pytest.mark.parametrize(("size", "expected"), [(2, 2), (4, 2), (8, 3), (9, 3), (10, 4), (24, 8), (100, 8)])
def test_the_best_third_at_least_two_at_most_the_breeding_population(size, expected):
    population = _population(size)
    chosen = SelectBestShare(8)(population)
    assert len(chosen) == expected
    assert [ind.loss for ind in chosen] == sorted(ind.loss for ind in population)[:expected]


def test_propulates_rule_once_the_population_is_three_times_the_breeding_size():
    from propulate.propagators import SelectMin

    population = _population(30, seed=1)
    assert SelectBestShare(8)(population) == SelectMin(8)(population)


def test_a_share_outside_zero_to_one_is_refused():
    with pytest.raises(ValueError, match="share"):
        SelectBestShare(8, share=0.0)
    assert len(SelectBestShare(8, share=1.0)(_population(5))) == 5


def _limits():
    return {"p0": (0.0, 1.0), "p1": (-3.0, -1.0), "p2": (1, 10)}


def test_the_default_breeding_draws_its_parents_from_the_best_third():
    from propulate.population import Individual

    from oialr_search.search._selection import default_breeding

    breeding = default_breeding(_limits(), pop_size=8, rng=random.Random(0), sigma_factor=0.15)
    assert isinstance(breeding.true_prop.propagators[0], SelectBestShare)
    rng = random.Random(2)
    population = []
    for k in range(12):
        ind = Individual({"p0": rng.random(), "p1": -2.0, "p2": 5}, _limits(), generation=k, rank=0)
        ind.loss = float(k)
        population.append(ind)
    # crossover, mutations and random restarts off: a child is a copy of a parent, one of the best 4 of 12
    for op in breeding.true_prop.propagators[2:]:
        op.probability = 0.0
    best, drawn = {ind["p0"] for ind in population[:4]}, set()
    for _ in range(60):
        drawn.add(breeding(population)["p0"])
    assert drawn <= best and len(drawn) > 1


@pytest.mark.parametrize(("n_floats", "moved"), [(9, 3), (4, 2), (1, 1)])
def test_the_default_breeding_moves_a_third_of_the_float_traits_of_a_child(n_floats, moved):
    from propulate.population import Individual

    from oialr_search.search._selection import default_breeding

    limits = {**{f"f{i}": (0.0, 1.0) for i in range(n_floats)}, "n": (1, 10), "c": ("a", "b")}
    breeding = default_breeding(limits, pop_size=8, rng=random.Random(0), sigma_factor=0.15)
    parent = {**{f"f{i}": 0.5 for i in range(n_floats)}, "n": 5, "c": "a"}
    population = []
    for k in range(12):  # identical parents: crossover changes nothing
        ind = Individual(dict(parent), limits, generation=k, rank=0)
        ind.loss = float(k)
        population.append(ind)
    for op in breeding.true_prop.propagators[2:]:  # only the Gaussian nudge on
        if type(op).__name__ != "IntervalMutationNormal":
            op.probability = 0.0
    for _ in range(20):
        child = breeding(population)
        assert sum(child[k] != v for k, v in parent.items()) == moved
        assert all(0.0 <= child[f"f{i}"] <= 1.0 for i in range(n_floats))


@pytest.mark.parametrize("shape", ["one operator", "not SelectMin first", "another breeding size",
                                   "no SelectUniform(2) second", "no Gaussian nudge", "a nudge of two traits"])
def test_a_propulate_whose_default_propagator_changed_shape_is_refused(monkeypatch, shape):
    from propulate.propagators import (
        Compose,
        Conditional,
        CrossoverUniform,
        InitUniform,
        IntervalMutationNormal,
        SelectMax,
        SelectMin,
        SelectUniform,
    )

    from oialr_search.search import _selection

    def reshaped(pop_size, limits, rng, **_):
        operators = {"one operator": [SelectMin(pop_size)],
                     "not SelectMin first": [SelectMax(pop_size), SelectUniform(2, rng=rng)],
                     "another breeding size": [SelectMin(pop_size + 1), SelectUniform(2, rng=rng)],
                     "no SelectUniform(2) second": [SelectMin(pop_size), SelectUniform(3, rng=rng)],
                     "no Gaussian nudge": [SelectMin(pop_size), SelectUniform(2, rng=rng)],
                     "a nudge of two traits": [SelectMin(pop_size), SelectUniform(2, rng=rng),
                                               CrossoverUniform(rng=rng),
                                               IntervalMutationNormal(limits, points=2, rng=rng)]}[shape]
        return Conditional(pop_size, Compose(operators), InitUniform(limits, rng=rng))

    monkeypatch.setattr(_selection, "get_default_propagator", reshaped)
    with pytest.raises(RuntimeError, match="changed shape"):
        _selection.default_breeding(_limits(), pop_size=8, rng=random.Random(0), sigma_factor=0.15)
