"""Which individuals Propulate breeds from: the best share of the island's population, up to its
breeding population.

Propulate's default propagator breeds from the ``pop_size`` individuals with the lowest loss, two
parents drawn uniformly among them. At the budgets our users afford, that is no selection at all
for a long while: the island's first breeding after its ``pop_size`` initial points draws its
parents from all of them, and at 24 trials on two workers the breeding population is a third of
the whole search. Breeding from the best third of the population instead (never fewer than two,
never more than ``pop_size``) exploits from the first breeding on and is Propulate's own rule once
the population is three times its breeding size. A small gain, measured on the digits task (2 ranks,
40 seeds): best val_loss 0.2055 ± 0.0109 -> 0.2035 ± 0.0115 at 24 trials and 0.1951 ± 0.0100 ->
0.1938 ± 0.0065 at 48 (the spread is what shrank most); an equivalent first version measured 0.1988
and 0.1904 on 20 of those seeds, so repeated runs move these means by about 0.005. The front's
hypervolume did not change beyond its spread (bench/search_quality.py; see the README).

Each child then has a third of its float traits (rounded up) moved by a Gaussian step of the
mutation sigma, where Propulate moves one: a child of two parents from the best third is otherwise
little more than a mix of their values, one trait nudged. Log-scale int dimensions count as float
traits (Propulate searches them on a float range in log10 space). On the digits task (10 float
traits, so 4 moved; 40 seeds) the best val_loss went from 0.2035 ± 0.0115 to 0.2010 ± 0.0102 at 24
trials and from 0.1938 ± 0.0065 to 0.1906 ± 0.0063 at 48; moving 3 measured 0.1995 and 0.1912.
Moving all ten by 10% or 5% of their range instead gained nothing at 24 trials.
"""

from __future__ import annotations

import math
import random

from propulate.propagators import Conditional, InitUniform, IntervalMutationNormal, SelectMin, SelectUniform
from propulate.utils import get_default_propagator


class SelectBestShare(SelectMin):
    """The best ``share`` of the individuals by loss, at least 2 and at most ``offspring``."""

    def __init__(self, offspring: int, *, share: float = 1 / 3) -> None:
        if not 0 < share <= 1:
            raise ValueError(f"share must be in (0, 1], got {share}")
        super().__init__(offspring)
        self.share = share

    def __call__(self, inds: list) -> list:  # noqa: D102 - see the class
        k = min(self.offspring, max(2, math.ceil(len(inds) * self.share)))
        return sorted(inds, key=lambda ind: float(ind.loss))[:k]  # as SelectMin, which needs offspring or more


def default_breeding(limits: dict, *, pop_size: int, rng: random.Random, sigma_factor: float) -> Conditional:
    """Propulate's default propagator, breeding from :class:`SelectBestShare` instead of ``SelectMin``,
    and nudging a third of the float traits of every child (rounded up) instead of one.

    Raises RuntimeError when Propulate's default propagator does not have the shape this (and the
    initial design, which replaces its ``false_prop``) relies on, rather than searching with
    something else than documented."""
    breeding = get_default_propagator(pop_size=pop_size, limits=limits, rng=rng, sigma_factor=sigma_factor)
    operators = getattr(getattr(breeding, "true_prop", None), "propagators", None)
    floats = sum(isinstance(lo, float) for lo, *_ in limits.values())  # Propulate's test of a continuous trait
    nudges = [op for op in operators or () if isinstance(op, IntervalMutationNormal)]
    if not isinstance(getattr(breeding, "false_prop", None), InitUniform) or not operators or len(operators) < 2 \
            or type(operators[0]) is not SelectMin or operators[0].offspring != pop_size \
            or not isinstance(operators[1], SelectUniform) or operators[1].offspring != 2 \
            or len(nudges) != (1 if floats else 0) or any(op.points != 1 for op in nudges):
        raise RuntimeError("Propulate's default propagator changed shape: update search/_selection.py "
                           "and search/_design.py")
    operators[0] = SelectBestShare(pop_size)
    for op in nudges:
        op.points = -(-floats // 3)  # float traits are always floats (see _propulate_backend._traits)
    return breeding
