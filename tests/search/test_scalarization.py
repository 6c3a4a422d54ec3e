"""Propulate's working value: the per-proposal Chebyshev scalarization of the raw objective values."""

import math

from oialr_search.search._pareto import non_dominated
from oialr_search.search._scalarization import VALUES, RescoringPropagator, attach, chebyshev, weights


class _Ind:
    def __init__(self, loss):
        self.loss = loss


def test_weights_spread_over_the_simplex():
    ws = [weights(k, 2) for k in range(50)]
    assert all(math.isclose(sum(w), 1.0) and min(w) >= 0 for w in ws)
    firsts = sorted(w[0] for w in ws)
    assert max(b - a for a, b in zip([0.0, *firsts], [*firsts, 1.0])) < 0.05  # no gap left uncovered
    assert all(math.isclose(sum(weights(k, 3)), 1.0) for k in range(5)) and weights(0, 1) == (1.0,)


def test_one_objective_is_the_plain_ranking():
    values = [(0.7,), (0.2,), (0.5,)]
    scores = chebyshev(values, ["COMPLETE"] * 3, (1.0,))
    assert sorted(range(3), key=scores.__getitem__) == [1, 2, 0]


def test_every_front_point_wins_under_some_weight_and_dominated_points_never_do():
    points = [(0.0, 1.0), (0.1, 0.5), (0.3, 0.3), (0.6, 0.1), (1.0, 0.0), (0.5, 0.6), (0.9, 0.9)]
    front = set(non_dominated(points))
    winners = set()
    for k in range(200):
        scores = chebyshev(points, ["COMPLETE"] * len(points), weights(k, 2))
        winners.add(min(range(len(points)), key=scores.__getitem__))
    assert winners == front


def test_pruned_rank_after_every_completed_and_failed_are_inf():
    points = [(0.9, 0.9), (0.0, 0.0), None, (0.5, 0.5)]
    states = ["COMPLETE", "PRUNED", "FAILED", "COMPLETE"]
    scores = chebyshev(points, states, (0.5, 0.5))
    assert scores[1] > max(scores[0], scores[3]) and scores[2] == math.inf
    assert chebyshev([(0.1, 0.1), (0.2, 0.2)], ["PRUNED", "PRUNED"], (0.5, 0.5))[0] < \
        chebyshev([(0.1, 0.1), (0.2, 0.2)], ["PRUNED", "PRUNED"], (0.5, 0.5))[1]


def test_the_propagator_rescores_copies_and_leaves_the_population_alone():
    population = [_Ind(0.0), _Ind(0.0), _Ind(0.0)]
    for ind, (v, state) in zip(population, [((0.0, 1.0), "COMPLETE"), ((1.0, 0.0), "COMPLETE"),
                                            ((0.5, 0.5), "PRUNED")]):
        ind.loss = attach(ind, v, state)
    before = [ind.loss for ind in population]
    seen = []
    prop = RescoringPropagator(lambda inds: seen.append(inds) or inds[0], n_objectives=2, rank=0, world_size=2)
    child = prop(population)
    assert [ind.loss for ind in population] == before  # Propulate matches individuals by their loss
    assert child not in population and getattr(child, VALUES) == (0.0, 1.0)
    rescored = [ind.loss for ind in seen[0]]
    assert rescored[2] > max(rescored[:2])  # the pruned one ranks last under any weight
    first = prop.last_weights
    prop(population)
    assert prop.last_weights != first  # every proposal explores another trade-off


def test_with_one_objective_the_provisional_loss_is_the_ranking():
    done, pruned, failed = _Ind(0), _Ind(0), _Ind(0)
    done.loss = attach(done, (0.9,), "COMPLETE")  # worse value than the pruned one reached
    pruned.loss = attach(pruned, (0.1,), "PRUNED")
    failed.loss = attach(failed, None, "FAILED")
    assert done.loss < pruned.loss < failed.loss == math.inf
    population = [done, pruned, failed]
    prop = RescoringPropagator(lambda inds: inds, n_objectives=1, rank=0, world_size=1)
    assert prop(population) is population  # nothing to rescore, nothing copied


def test_infeasible_trials_rank_after_feasible_and_before_pruned():
    points = [(0.9, 0.9), (0.0, 0.0), (0.1, 0.1), (0.5, 0.5)]
    states = ["COMPLETE", "COMPLETE", "PRUNED", "COMPLETE"]
    feasible = [True, False, None, True]
    for k in range(10):
        scores = chebyshev(points, states, weights(k, 2), feasible=feasible)
        assert max(scores[0], scores[3]) < scores[1] < scores[2]
    a, b, c = _Ind(0), _Ind(0), _Ind(0)
    a.loss = attach(a, (0.9,), "COMPLETE", True)
    b.loss = attach(b, (0.1,), "COMPLETE", False)  # better value, but violates a constraint
    c.loss = attach(c, (0.0,), "PRUNED")
    assert a.loss < b.loss < c.loss
