"""Propulate's working value: the raw objective values ranked in NSGA-II's order before every breeding."""

import math
import random

from oialr_search.search._pareto import dominates, non_dominated
from oialr_search.search._scalarization import VALUES, RescoringPropagator, attach, crowding, nsga_scores


class _Ind:
    def __init__(self, loss):
        self.loss = loss


def _reference_fronts(points):
    """Plain NSGA-II front index: the number of times the non-dominated points must be peeled off first."""
    index, rest, k = {}, set(range(len(points))), 0
    while rest:
        front = {i for i in rest if not any(dominates(points[j], points[i]) for j in rest)}
        index.update(dict.fromkeys(front, k))
        rest -= front
        k += 1
    return index


def test_one_objective_is_the_plain_ranking():
    values = [(0.7,), (0.2,), (0.5,)]
    scores = nsga_scores(values, ["COMPLETE"] * 3)
    assert sorted(range(3), key=scores.__getitem__) == [1, 2, 0]


def test_fronts_come_in_order_as_a_brute_force_peeling_says():
    rng = random.Random(0)
    for trial in range(30):
        m = 2 if trial % 3 else 3
        points = [tuple(round(rng.random(), 1) for _ in range(m)) for _ in range(rng.randint(1, 40))]
        scores = nsga_scores(points, ["COMPLETE"] * len(points))
        fronts = _reference_fronts(points)
        for i in range(len(points)):
            assert math.floor(scores[i]) == fronts[i]  # the integer part is the front, the rest the crowding


def test_crowding_puts_each_fronts_ends_and_its_isolated_points_first():
    front = [(0.0, 1.0), (0.1, 0.9), (0.2, 0.8), (0.3, 0.7), (1.0, 0.0)]  # (1, 0) far from the others
    c = crowding(front)
    assert c[0] == c[4] == math.inf and c[3] > c[1] and math.isclose(c[1], c[2])
    scores = nsga_scores(front + [(0.5, 0.9)], ["COMPLETE"] * 6)
    order = sorted(range(6), key=scores.__getitem__)
    assert set(order[:2]) == {0, 4} and order[2] == 3 and order[-1] == 5


def test_crowding_is_normalized_per_objective_and_summed_over_them():
    front = [(0.0, 1.0), (0.1, 0.8), (0.5, 0.7), (0.6, 0.1), (1.0, 0.0)]
    c = crowding(front)
    # per objective, the neighbours' gap over that objective's range, summed over the objectives
    assert math.isclose(c[1], 0.5 / 1.0 + 0.3 / 1.0) and math.isclose(c[2], 0.5 + 0.7)
    assert math.isclose(c[3], 0.5 + 0.7)
    scaled = crowding([(x * 1000.0, y) for x, y in front])  # units do not matter
    assert all(math.isclose(a, b) for a, b in zip(c, scaled))
    assert crowding([(-1.5e308, 1.5e308), (0.0, 0.0), (1.5e308, -1.5e308)])[1] == 2.0  # no overflow to NaN
    assert crowding([(-5e-324, 1.0), (0.0, 0.5), (5e-324, 0.0)])[1] == 2.0  # the smallest range there is


def test_an_objective_constant_over_the_front_decides_nothing():
    points = [(0.5, 0.1 * i, 1 - 0.1 * i) for i in range(5)]
    for order in ([0, 1, 2, 3, 4], [2, 0, 4, 1, 3]):
        c = crowding([points[i] for i in order])
        c = [c[order.index(i)] for i in range(5)]
        assert c[0] == c[4] == math.inf and all(math.isclose(x, 2 * 0.2 / 0.4) for x in c[1:4])


def test_copies_of_a_point_rank_behind_the_rest_of_its_front():
    points = [(0.0, 1.0), (0.0, 1.0), (0.0, 1.0), (0.5, 0.5), (1.0, 0.0), (0.6, 0.6)]
    scores = nsga_scores(points, ["COMPLETE"] * 6)
    best3 = sorted(range(6), key=scores.__getitem__)[:3]
    assert set(best3) == {0, 3, 4} and max(scores[1], scores[2]) < scores[5]  # still before the next front


def test_the_breeding_population_spans_the_whole_front():
    # a population gathered around one trade-off, with one trial at each end: a breeding population
    # of 4 keeps both ends (a weight aimed at the crowd would have bred from the crowd alone)
    crowd = [(0.5 + d, 0.5 - d) for d in (-0.02, -0.01, 0.0, 0.01, 0.02)]
    points = [(0.0, 1.0), *crowd, (1.0, 0.0), (0.6, 0.6), (0.7, 0.7)]
    scores = nsga_scores(points, ["COMPLETE"] * len(points))
    best4 = sorted(range(len(points)), key=scores.__getitem__)[:4]
    assert {0, 6} <= set(best4) and set(best4) <= set(non_dominated(points))


def test_keep_orders_only_the_best_and_bounds_the_work(monkeypatch):
    rng = random.Random(1)
    points = [(rng.random(), rng.random()) for _ in range(200)]
    full = nsga_scores(points, ["COMPLETE"] * 200)
    kept = nsga_scores(points, ["COMPLETE"] * 200, keep=16)
    best = sorted(range(200), key=full.__getitem__)[:16]
    assert sorted(range(200), key=kept.__getitem__)[:16] == best
    assert all(kept[i] > max(kept[j] for j in best) for i in range(200) if i not in best and kept[i] != full[i])
    from oialr_search.search import _scalarization

    peeled = []
    monkeypatch.setattr(_scalarization, "non_dominated", lambda pts: peeled.append(len(pts)) or non_dominated(pts))
    chain = [(i, i) for i in range(20_000)]  # 20,000 fronts of one point: only the first 8 are peeled off
    scores = nsga_scores(chain, ["COMPLETE"] * len(chain), keep=8)
    assert sorted(range(len(chain)), key=scores.__getitem__)[:8] == list(range(8)) and len(peeled) == 8


def test_pruned_rank_after_every_completed_and_failed_are_inf():
    points = [(0.9, 0.9), (0.0, 0.0), None, (0.5, 0.5)]
    states = ["COMPLETE", "PRUNED", "FAILED", "COMPLETE"]
    scores = nsga_scores(points, states)
    assert scores[1] > max(scores[0], scores[3]) and scores[2] == math.inf
    pruned = nsga_scores([(0.1, 0.1), (0.2, 0.2)], ["PRUNED", "PRUNED"])
    assert pruned[0] < pruned[1]
    # a tier left unordered by keep still ranks behind the ordered ones, and before the next tier
    scores = nsga_scores([(i, i) for i in range(5)] + [(0.0, 0.0)], ["COMPLETE"] * 5 + ["PRUNED"], keep=2)
    assert max(scores[:2]) < min(scores[2:5]) and max(scores[2:5]) < scores[5]


def test_the_propagator_rescores_copies_and_leaves_the_population_alone():
    population = [_Ind(0.0), _Ind(0.0), _Ind(0.0)]
    for ind, (v, state) in zip(population, [((0.0, 1.0), "COMPLETE"), ((1.0, 0.0), "COMPLETE"),
                                            ((0.5, 0.5), "PRUNED")]):
        ind.loss = attach(ind, v, state)
    before = [ind.loss for ind in population]
    seen = []
    prop = RescoringPropagator(lambda inds: seen.append(inds) or inds[0], n_objectives=2)
    child = prop(population)
    assert [ind.loss for ind in population] == before  # Propulate matches individuals by their loss
    assert child not in population and getattr(child, VALUES) == (0.0, 1.0)
    rescored = [ind.loss for ind in seen[0]]
    assert rescored[2] > max(rescored[:2])  # the pruned one ranks last


def test_with_one_objective_the_provisional_loss_is_the_ranking():
    done, pruned, failed = _Ind(0), _Ind(0), _Ind(0)
    done.loss = attach(done, (0.9,), "COMPLETE")  # worse value than the pruned one reached
    pruned.loss = attach(pruned, (0.1,), "PRUNED")
    failed.loss = attach(failed, None, "FAILED")
    assert done.loss < pruned.loss < failed.loss == math.inf
    population = [done, pruned, failed]
    prop = RescoringPropagator(lambda inds: inds, n_objectives=1)
    assert prop(population) is population  # nothing to rescore, nothing copied


def test_infeasible_trials_rank_after_feasible_and_before_pruned():
    points = [(0.9, 0.9), (0.0, 0.0), (0.1, 0.1), (0.5, 0.5)]
    states = ["COMPLETE", "COMPLETE", "PRUNED", "COMPLETE"]
    feasible = [True, False, None, True]
    scores = nsga_scores(points, states, feasible=feasible)
    assert max(scores[0], scores[3]) < scores[1] < scores[2]
    a, b, c = _Ind(0), _Ind(0), _Ind(0)
    a.loss = attach(a, (0.9,), "COMPLETE", True)
    b.loss = attach(b, (0.1,), "COMPLETE", False)  # better value, but violates a constraint
    c.loss = attach(c, (0.0,), "PRUNED")
    assert a.loss < b.loss < c.loss
