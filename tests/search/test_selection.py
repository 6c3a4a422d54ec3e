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
