"""Propulate ranks a pruned trial by its projection to the end of training, made from the study's own
completed curves; the database keeps its raw values."""

import math

import pytest

from oialr_search.search import Objective
from oialr_search.search._projection import project, projected_values
from oialr_search.search._propulate_backend import ranked_as
from oialr_search.search._scalarization import PROJECTED, attach, nsga_scores
from oialr_search.storage import COMPLETE, FAILED, PRUNED, Store


class _Ind:
    loss = 0.0


def test_project_adds_the_upper_quartile_of_the_completed_changes():
    # changes final - then: -0.4, -0.3, -0.2, -0.1, 0.0 -> the inclusive upper quartile is -0.1
    curves = [((1.0,), (1.0 + d,)) for d in (-0.4, -0.3, -0.2, -0.1, 0.0)]
    assert project((2.0,), curves) == pytest.approx((1.9,))
    assert project((2.0,), curves[:1]) == pytest.approx((1.6,))  # one curve: its change
    # per objective, each on its own column of changes
    two = [((1.0, 5.0), (0.5, 5.0)), ((1.0, 5.0), (0.7, 3.0))]
    assert project((2.0, 5.0), two) == pytest.approx((2.0 - 0.35, 5.0 - 0.5))


def test_project_skips_curves_with_missing_values_and_needs_one():
    assert project((1.0,), []) is None
    assert project((1.0,), [((math.inf,), (0.5,)), ((1.0,), (math.nan,))]) is None
    assert project((1.0,), [((math.inf,), (0.5,)), ((1.0,), (0.8,))]) == pytest.approx((0.8,))


def _epochs(values_by_epoch):
    return [{"epoch": e, "val_loss": v, "top1": 100 - 10 * v} for e, v in enumerate(values_by_epoch, start=1)]


def _trial(store, study, state, curve):
    t = store.start_trial(study, params={}, rank=0, island=None, device="cpu")
    final = curve[-1]
    store.finish_trial(t.id, state=state, value=final, values=[100 - 10 * final, final],
                       metrics={"val_loss": final}, epochs=_epochs(curve))
    return t


def test_projected_values_read_only_the_completed_trials_that_reached_the_epoch(tmp_path):
    store = Store(f"sqlite:///{tmp_path}/db.sqlite")
    study = store.create_study(name="s", space={"raw": {}}, space_path="", metric="top1", direction="maximize",
                               backend="propulate", seed=0, budget=10,
                               objectives=[{"metric": "top1", "direction": "maximize"},
                                           {"metric": "val_loss", "direction": "minimize"}])
    _trial(store, study, COMPLETE, [2.0, 1.5, 1.0])  # val_loss change from epoch 1: -1.0; top1: +10
    _trial(store, study, PRUNED, [1.0])  # stopped at epoch 1: not a completed curve
    _trial(store, study, FAILED, [3.0, 0.1])
    store.start_trial(study, params={}, rank=0, island=None, device="cpu")  # running
    objectives = [Objective("top1", "maximize"), Objective("val_loss", "minimize")]
    # minimize sense: top1 is negated, so the completed trial's change is -10 on it
    assert projected_values(store, study, objectives, 1, (-85.0, 1.5)) == pytest.approx((-95.0, 0.5))
    assert projected_values(store, study, objectives, 4, (-85.0, 1.5)) is None  # no completed trial got there
    assert projected_values(store, study, objectives, None, (-85.0, 1.5)) is None
    # Propulate's view: projected and ranked with the completed trials, or as stored where nothing projects
    space = _space(tmp_path, "objectives: [{metric: top1}, {metric: val_loss}]")
    assert ranked_as(store, study, space, (-85.0, 1.5), PRUNED, None, 1) == \
        (pytest.approx((-95.0, 0.5)), PROJECTED, None)
    assert ranked_as(store, study, space, (-85.0, 1.5), PRUNED, None, 4) == ((-85.0, 1.5), PRUNED, None)
    assert ranked_as(store, study, space, (-90.0, 1.0), COMPLETE, True, 3) == ((-90.0, 1.0), COMPLETE, True)
    # with constraints, the projection is judged by them: on objectives by its projected values, on any
    # other metric (not projected) as violated, so it never ranks ahead of an infeasible completed trial
    for constraints, feasible in [("{top1: {min: 90}}", True), ("{top1: {min: 96}}", False),
                                  ("{val_loss: {max: 0.4}}", False), ("{trainable_fraction: {max: 1}}", False)]:
        space = _space(tmp_path, f"objectives: [{{metric: top1}}, {{metric: val_loss}}]\nconstraints: {constraints}")
        assert ranked_as(store, study, space, (-85.0, 1.5), PRUNED, None, 1)[1:] == (PROJECTED, feasible), constraints
    # a resume projects many trials with one query per stop epoch
    cache = {}
    reads = []
    real = store.completed_curves_at
    store.completed_curves_at = lambda *a: reads.append(a[1]) or real(*a)
    for values in [(-85.0, 1.5), (-80.0, 2.0)]:
        projected_values(store, study, objectives, 1, values, cache=cache)
    assert reads == [1] and cache[1] == pytest.approx((-10.0, -1.0))


def _space(tmp_path, objectives):
    from oialr_search.search import load_space

    (tmp_path / "space.yaml").write_text("base: {model: {name: mlp}, data: {name: digits}, train: {epochs: 3}}\n"
                                         f"{objectives}\n"
                                         "params: {optim.lr: {type: float, low: 0.001, high: 0.1}}\n")
    return load_space(tmp_path / "space.yaml")


def test_a_projected_trial_ranks_among_the_completed_ones():
    done, good, bad, pruned = _Ind(), _Ind(), _Ind(), _Ind()
    done.loss = attach(done, (0.5,), COMPLETE)
    good.loss = attach(good, (0.4,), PROJECTED)  # projected better than a completed trial
    bad.loss = attach(bad, (0.6,), PROJECTED)
    pruned.loss = attach(pruned, (0.1,), PRUNED)  # nothing to project with: behind every completed one
    assert good.loss < done.loss < bad.loss < pruned.loss
    scores = nsga_scores([(0.5, 0.5), (0.4, 0.4), (0.1, 0.1)], [COMPLETE, PROJECTED, PRUNED])
    assert scores[1] < scores[0] < scores[2]


def test_a_resumed_search_rebuilds_pruned_trials_with_their_projection(tmp_path):
    import pickle

    from oialr_search.search._propulate_backend import rebuild_checkpoints
    from oialr_search.search._scalarization import STATE

    space = _space(tmp_path, "objective: {metric: val_loss, direction: minimize}")
    store = Store(f"sqlite:///{tmp_path}/db.sqlite")
    study = store.create_study(name="s", space={"raw": {}}, space_path="", metric="val_loss", direction="minimize",
                               backend="propulate", seed=0, budget=10)
    for lr, state, curve in [(0.01, COMPLETE, [2.0, 1.5, 1.0]), (0.02, PRUNED, [1.8]), (0.03, PRUNED, [1.9, 1.7])]:
        t = store.start_trial(study, params={"optim.lr": lr}, rank=0, island=None, device="cpu")
        store.finish_trial(t.id, state=state, value=curve[-1], values=[curve[-1]], metrics={"val_loss": curve[-1]},
                           epochs=[{"epoch": e, "val_loss": v} for e, v in enumerate(curve, start=1)])
    assert rebuild_checkpoints(store, study, space, tmp_path / "ckpt", workers=2) == 3
    population = pickle.loads((tmp_path / "ckpt" / "island_0_ckpt.pickle").read_bytes())
    loss = {round(float(ind["p0"]), 4): (ind.loss, getattr(ind, STATE)) for ind in population}
    assert loss[0.01] == (1.0, COMPLETE)
    assert loss[0.02][1] == loss[0.03][1] == PROJECTED
    assert loss[0.02][0] == pytest.approx(1.8 - 1.0) and loss[0.03][0] == pytest.approx(1.7 - 0.5)
