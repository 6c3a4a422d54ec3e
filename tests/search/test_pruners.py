"""Pruners on scripted rungs: ASHA, the median rule and their multi-objective dominance rules."""

import math

import pytest

from oialr_search.exceptions import OIALRSearchError
from oialr_search.search.pruners import (
    PRUNERS,
    ASHAPruner,
    BasePruner,
    MedianPruner,
    NopPruner,
    PrunerError,
    create_pruner,
)

NAN, INF = math.nan, math.inf


def one(*values):
    return [[v] for v in values]


# ---- decision points ----

def test_asha_rungs():
    asha = ASHAPruner(min_epochs=1, reduction=3)
    assert [e for e in range(1, 30) if asha.decides_at(e, 100)] == [1, 3, 9, 27]
    assert [e for e in range(1, 30) if asha.decides_at(e, 9)] == [1, 3]  # never the final epoch
    assert not asha.decides_at(0, 9) and not asha.decides_at(27, 27)
    asha = ASHAPruner(min_epochs=2, reduction=2)
    assert [e for e in range(1, 40) if asha.decides_at(e, 100)] == [2, 4, 8, 16, 32]


def test_median_and_nop_decision_points():
    median = MedianPruner(min_epochs=3)
    assert [e for e in range(1, 10) if median.decides_at(e, 7)] == [3, 4, 5, 6]
    assert not any(NopPruner().decides_at(e, 10) for e in range(12))


# ---- ASHA, one objective ----

def test_asha_first_trial_at_a_rung_continues():
    assert not ASHAPruner().should_prune(values=[100.0], peers=[])


def test_asha_keeps_top_third():
    asha = ASHAPruner(reduction=3)
    peers = one(1.0, 2.0, 3.0, 4.0, 5.0)  # n = 6 with the trial: keep the best 2
    assert not asha.should_prune(values=[0.5], peers=peers)  # rung best
    assert not asha.should_prune(values=[1.5], peers=peers)  # second
    assert not asha.should_prune(values=[2.0], peers=peers)  # ties favour the trial under test
    assert asha.should_prune(values=[2.5], peers=peers)  # below the cut
    assert asha.should_prune(values=[9.0], peers=peers)


def test_asha_small_rungs_keep_only_the_best():
    asha = ASHAPruner(reduction=3)
    assert asha.should_prune(values=[2.0], peers=one(1.0))  # n = 2: keep max(1, 0) = 1
    assert not asha.should_prune(values=[1.0], peers=one(2.0))
    assert not asha.should_prune(values=[1.0], peers=one(1.0, 5.0))  # tied best
    assert not ASHAPruner(reduction=2).should_prune(values=[2.0], peers=one(1.0, 3.0, 4.0))  # n = 4: keep 2


def test_asha_non_finite():
    asha = ASHAPruner()
    assert asha.should_prune(values=[NAN], peers=[])  # even alone at the rung
    assert asha.should_prune(values=[INF], peers=[])
    # Diverged peers are worse than anything: a finite value beats them.
    assert not asha.should_prune(values=[1e9], peers=one(NAN, INF, -INF, NAN, 1.0))


# ---- median, one objective ----

def test_median_rule():
    median = MedianPruner(min_trials=4)
    peers = one(1.0, 2.0, 3.0, 4.0)  # median 2.5
    assert median.should_prune(values=[3.0], peers=peers)
    assert not median.should_prune(values=[2.5], peers=peers)  # strictly worse only
    assert not median.should_prune(values=[0.1], peers=peers)  # the best is kept
    assert not median.should_prune(values=[99.0], peers=peers[:3])  # too few peers
    assert MedianPruner(min_trials=1).should_prune(values=[2.0], peers=one(1.0))
    assert median.should_prune(values=[NAN], peers=[])  # own NaN prunes, whatever the peers
    assert not median.should_prune(values=[50.0], peers=one(1.0, NAN, INF, NAN))  # median is +inf


# ---- multi-objective dominance rules ----

TWO = [[1.0, 1.0], [2.0, 2.0], [0.0, 5.0], [5.0, 0.0]]


def test_median_multi_objective():
    median = MedianPruner(min_trials=4)
    assert median.should_prune(values=[3.0, 3.0], peers=TWO[:2] + [[2.5, 2.5], [9.0, 9.0]])  # 3 of 4 dominate
    assert not median.should_prune(values=[3.0, 3.0], peers=TWO)  # 2 of 4: not more than half
    assert not median.should_prune(values=[0.5, 9.0], peers=TWO)  # non-dominated
    assert not median.should_prune(values=[1.0, 1.0], peers=TWO + [[1.0, 1.0]])  # equal does not dominate
    assert median.should_prune(values=[1.0, NAN], peers=TWO)
    assert not median.should_prune(values=[3.0, 3.0], peers=TWO[:2] + [[NAN, 0.0], [0.0, INF]])  # 2 of 4


def test_asha_multi_objective():
    asha = ASHAPruner(reduction=3)  # prune iff d > 2/3 of the peers
    peers = [[1.0, 1.0], [2.0, 2.0], [0.5, 0.5]]
    assert asha.should_prune(values=[3.0, 3.0], peers=peers)  # 3 > 2
    assert not asha.should_prune(values=[3.0, 3.0], peers=[*peers[:2], [9.0, 0.0]])  # 2 > 2 is false
    assert not asha.should_prune(values=[0.0, 9.0], peers=peers)  # non-dominated is never pruned
    assert not asha.should_prune(values=[9.0, 9.0], peers=[])
    assert not asha.should_prune(values=[3.0, 3.0], peers=[*peers[:2], [NAN, 0.0]])  # diverged peer never dominates
    assert ASHAPruner(reduction=2).should_prune(values=[3.0, 3.0], peers=[*peers[:2], [9.0, 0.0]])  # 2 > 1.5


def test_mismatched_lengths_and_empty_values():
    with pytest.raises(ValueError, match=r"peers\[1\]"):
        ASHAPruner().should_prune(values=[1.0, 2.0], peers=[[1.0, 2.0], [1.0]])
    with pytest.raises(ValueError, match="values"):
        MedianPruner().should_prune(values=[], peers=[])


def test_nop_never_prunes():
    assert not NopPruner().should_prune(values=[NAN], peers=one(1.0))


# ---- specs ----

@pytest.mark.parametrize(("spec", "cls", "fields"), [
    (None, NopPruner, {}),
    ("none", NopPruner, {}),
    ({"type": "none"}, NopPruner, {}),
    ("median", MedianPruner, {"min_epochs": 1, "min_trials": 4}),
    ({"type": "median", "min_trials": 2}, MedianPruner, {"min_epochs": 1, "min_trials": 2}),
    ("asha", ASHAPruner, {"min_epochs": 1, "reduction": 3}),
    ({"type": "asha", "min_epochs": 2, "reduction": 4}, ASHAPruner, {"min_epochs": 2, "reduction": 4}),
])
def test_create_pruner_and_to_dict_round_trip(spec, cls, fields):
    pruner = create_pruner(spec)
    assert type(pruner) is cls and isinstance(pruner, BasePruner) and PRUNERS[pruner.name] is cls
    assert pruner.to_dict() == {"type": pruner.name, **fields}
    assert create_pruner(pruner.to_dict()).to_dict() == pruner.to_dict()
    assert cls.__name__ in repr(pruner)


@pytest.mark.parametrize(("spec", "message"), [
    ("x", "type: must be one of none, median, asha, got 'x'"),
    ({"type": "hyperband"}, "type: must be one of none, median, asha, got 'hyperband'"),
    ({"type": 3}, "type: must be one of none, median, asha, got 3"),
    ({"min_epochs": 1}, "type: missing; must be one of none, median, asha"),
    ({"type": "asha", "min_trials": 3},
     "min_trials: unknown field for pruner type asha; expected min_epochs, reduction"),
    ({"type": "none", "reduction": 3}, "reduction: unknown field for pruner type none; expected no fields"),
    ({"type": "asha", "reduction": 1}, "reduction: must be an integer >= 2, got 1"),
    ({"type": "asha", "reduction": 2.0}, "reduction: must be an integer >= 2, got 2.0"),
    ({"type": "asha", "min_epochs": 0}, "min_epochs: must be an integer >= 1, got 0"),
    ({"type": "median", "min_epochs": True}, "min_epochs: must be an integer >= 1, got True"),
    ({"type": "median", "min_trials": 0}, "min_trials: must be an integer >= 1, got 0"),
    ({"type": "median", "min_trials": "4"}, "min_trials: must be an integer >= 1, got '4'"),
    (["asha"], "pruner: must be a type name or a mapping"),
])
def test_create_pruner_errors(spec, message):
    with pytest.raises(ValueError) as info:
        create_pruner(spec)
    assert str(info.value).startswith(message)
    assert isinstance(info.value, PrunerError) and isinstance(info.value, OIALRSearchError)


def test_constructors_are_keyword_only():
    with pytest.raises(TypeError):
        ASHAPruner(1, 3)
    with pytest.raises(TypeError):
        MedianPruner(1)
