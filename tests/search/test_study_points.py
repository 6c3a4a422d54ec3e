"""The Propulate backend's surrogate learns from the whole study (every island, rank and job), and takes
the trials running now as placeholders."""

import math
import random

import pytest

from oialr_search.search import load_space
from oialr_search.search._propulate_backend import _traits, limits_of, study_points
from oialr_search.search._study_points import StudyPoints
from oialr_search.search._surrogate import SurrogatePick
from oialr_search.storage import COMPLETE, FAILED, PRUNED, Store

from .test_surrogate import LIMITS, Ind, Inner, population


def _study(tmp_path, objectives="[{metric: val_loss}]"):
    (tmp_path / "space.yaml").write_text(
        "base: {model: {name: mlp}, data: {name: digits}, train: {epochs: 3}}\n"
        f"objectives: {objectives}\n"
        "params:\n  oialr.beta: {type: float, low: 0.0, high: 0.9}\n"
        "  optim.lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}\n")
    space = load_space(tmp_path / "space.yaml")
    store = Store(f"sqlite:///{tmp_path}/db.sqlite")
    study = store.create_study(name="s", space=space.to_dict(), space_path="", metric="val_loss",
                               direction="minimize", backend="propulate", seed=0, budget=20,
                               objectives=[o.to_dict() for o in space.objectives])
    return space, store, study, study_points(store, study, space)


def _epochs(curve, tf=0.5):
    return [{"epoch": e, "val_loss": v, "top1": 100 - 10 * v, "trainable_fraction": tf}
            for e, v in enumerate(curve, start=1)]


def _run(store, study, beta, rank=0):
    return store.start_trial(study, params={"oialr.beta": beta, "optim.lr": 1e-3}, rank=rank, island=None,
                             device="cpu")


def _finish(store, t, curve, state=COMPLETE, tf=0.5):
    store.finish_trial(t.id, state=state, value=curve[-1], values=[curve[-1]],
                       metrics={"val_loss": curve[-1]}, epochs=_epochs(curve, tf))


def _by_beta(points):
    return sorted((round(traits["p0"], 6), loss) for traits, loss in points)


def test_every_finished_trial_is_a_point_even_one_that_finished_after_a_later_numbered_one(tmp_path):
    _, store, study, points = _study(tmp_path)
    slow, fast = _run(store, study, 0.1, rank=1), _run(store, study, 0.2, rank=2)
    _finish(store, fast, [0.9, 0.5])
    got, running = points.points()
    assert _by_beta(got) == [(0.2, 0.5)] and [r["p0"] for r in running] == [pytest.approx(0.1)]
    _finish(store, slow, [0.8, 0.3])  # finishes after the later-numbered one was read
    failed = _run(store, study, 0.3)
    store.finish_trial(failed.id, state=FAILED, error="boom")
    diverged = _run(store, study, 0.4)
    _finish(store, diverged, [math.nan])
    got, running = points.points()
    assert _by_beta(got) == [(0.1, 0.3), (0.2, 0.5)] and running == []  # failed and diverged: no point


def test_a_pruned_trial_is_ranked_by_its_projection_once_a_trial_completed(tmp_path):
    _, store, study, points = _study(tmp_path)
    pruned = _run(store, study, 0.5)
    _finish(store, pruned, [0.6], state=PRUNED)
    (got, _), = [points.points()]
    assert got[0][1] > 1e8  # nothing to project with yet: behind every completed trial (pushed by a tier)
    done = _run(store, study, 0.7)
    _finish(store, done, [0.9, 0.4])  # changes by -0.5 after epoch 1
    got, _ = points.points()
    assert _by_beta(got) == [(0.5, pytest.approx(0.1)), (0.7, 0.4)]  # 0.6 - 0.5, ranked with the completed


def test_two_objectives_are_scored_in_nsga2_order_over_the_whole_study(tmp_path):
    _, store, study, points = _study(tmp_path, "[{metric: val_loss}, {metric: trainable_fraction}]")
    for beta, loss, tf in [(0.1, 0.2, 0.9), (0.2, 0.5, 0.1), (0.3, 0.6, 0.95)]:
        t = _run(store, study, beta)
        store.finish_trial(t.id, state=COMPLETE, value=loss, values=[loss, tf], metrics={"val_loss": loss},
                           epochs=_epochs([loss], tf))
    scores = dict(_by_beta(points.points()[0]))
    assert scores[0.1] < 1 and scores[0.2] < 1 and scores[0.3] >= 1  # the front first, the dominated one after


def test_the_pick_fits_the_study_not_only_the_island():
    # the island's trials say the optimum is near 0.2, the study's (more of them) that it is near 0.8
    island = population([0.0, 0.1, 0.3, 0.5, 0.7, 0.9], f=lambda x: (x - 0.2) ** 2)
    study = [({"p0": x, "p1": 2}, (x - 0.8) ** 2) for x in [i / 10 for i in range(11)]]

    def pick(history):
        inner = Inner([Ind(0.2), Ind(0.8)], pop_size=4)
        return SurrogatePick(inner, LIMITS, rng=random.Random(0), candidates=2, history=history)(island)["p0"]

    assert pick(None) == 0.2 and pick(lambda: (study, [])) == 0.8
    # a study with fewer points than the island (its trials not all stored yet): the island's
    assert pick(lambda: (study[:4], [])) == 0.2


def test_a_running_trial_takes_the_expected_improvement_next_to_it():
    study = [({"p0": x, "p1": 2}, (x - 0.45) ** 2) for x in [0.0, 0.1, 0.2, 0.3, 0.6, 0.7, 0.8, 0.9, 1.0]]

    def pick(running):
        inner = Inner([Ind(0.45), Ind(0.55)])  # the model's best guess, and one a step from it
        return SurrogatePick(inner, LIMITS, rng=random.Random(0), candidates=2,
                             history=lambda: (study, running))(population([0.0, 0.5, 1.0, 0.2]))["p0"]

    assert pick([]) == 0.45
    assert pick([{"p0": 0.45, "p1": 2}]) == 0.55  # another rank runs 0.45 already
    assert pick([{"p0": 0.95, "p1": 2}]) == 0.45  # one far away changes nothing here


def test_a_study_that_cannot_be_read_leaves_the_island_s_own_model(capsys):
    def broken():
        raise RuntimeError("storage sqlite:///x: read failed: disk I/O error")

    island = population([0.0, 0.1, 0.3, 0.5, 0.7, 0.9], f=lambda x: (x - 0.2) ** 2)
    pick = SurrogatePick(Inner([Ind(0.8), Ind(0.2), Ind(0.8), Ind(0.2)]), LIMITS, rng=random.Random(0),
                         candidates=2, history=broken)
    assert pick(island)["p0"] == 0.2 and pick(island)["p0"] == 0.2
    err = capsys.readouterr().err
    assert err.count("surrogate: fitting the island's own trials") == 1 and "disk I/O error" in err


def test_ctrl_c_turned_into_a_library_error_still_stops_the_rank():
    def interrupted():
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt as exc:
            raise RuntimeError("storage: read failed") from exc

    pick = SurrogatePick(Inner([Ind(0.3), Ind(0.88)]), LIMITS, rng=random.Random(0), candidates=2,
                         history=interrupted)
    with pytest.raises(KeyboardInterrupt):
        pick(population([0.0, 0.1, 0.2, 0.3, 0.4]))


def test_an_island_that_cannot_breed_yet_picks_among_its_draws_once_its_design_share_is_run():
    # an island of 6 individuals that breeds from 8: its worker's design share decides whether the next
    # proposal is the next design point (as drawn) or the model's pick of 2 draws
    study = [({"p0": x, "p1": 2}, (x - 0.8) ** 2) for x in [i / 10 for i in range(11)]]
    island = population([0.0, 0.1, 0.3, 0.5, 0.7, 0.9])

    def pick(left):
        inner = Inner([Ind(0.2), Ind(0.8)], pop_size=8)
        return SurrogatePick(inner, LIMITS, rng=random.Random(0), candidates=2, history=lambda: (study, []),
                             design_left=lambda: left)(island)["p0"]

    assert pick(True) == 0.2 and pick(False) == 0.8


def test_a_fresh_design_is_one_breeding_population_shared_out_among_the_islands():
    from oialr_search.search._propulate_backend import design_size, island_sizes

    assert design_size(8, island_sizes(2), 24) == 8  # one island: all of it
    assert design_size(8, island_sizes(4), 24) == 4  # two islands: 4 each, 8 in all
    assert design_size(16, island_sizes(8), 24) == 4  # four: 4 each
    assert design_size(10, island_sizes(5), 48) == 5  # islands of 3 and 2
    assert design_size(8, island_sizes(4), 6) == 3 and design_size(8, island_sizes(4), 1) == 1  # small budgets


class _FailingOnce:
    """Raise once, the first time ``name`` is called, then behave."""

    def __init__(self, target, name):
        self.real, self.failed = getattr(target, name), False
        setattr(target, name, self)

    def __call__(self, *args, **kwargs):
        if not self.failed:
            self.failed = True
            raise RuntimeError("storage: read failed: server closed the connection unexpectedly")
        return self.real(*args, **kwargs)


def test_a_read_that_fails_while_trials_are_added_loses_none_of_them(tmp_path, monkeypatch):
    from oialr_search.search import _study_points

    _, store, study, points = _study(tmp_path)
    for beta, curve, state in [(0.1, [0.9, 0.3], COMPLETE), (0.5, [0.8], PRUNED), (0.7, [0.9, 0.5], COMPLETE)]:
        _finish(store, _run(store, study, beta), curve, state)
    failing = _FailingOnce(_study_points, "ranked_as")  # the pruned trial's projection reads the store
    monkeypatch.setattr(_study_points, "ranked_as", failing)
    with pytest.raises(RuntimeError):
        points.points()
    assert failing.failed
    assert [b for b, _ in _by_beta(points.points()[0])] == [0.1, 0.5, 0.7]


def test_a_poll_that_fails_half_way_loses_no_trial(tmp_path):
    _, store, study, points = _study(tmp_path)
    old = _run(store, study, 0.2)
    store.mark_interrupted(study)  # another job's start marked it: looked at again on every poll
    assert points.points() == ([], [])
    for beta in (0.3, 0.6):
        _finish(store, _run(store, study, beta), [0.9, beta])
    _FailingOnce(store, "trials_numbered")  # the second read of the poll fails, after the first
    with pytest.raises(RuntimeError):
        points.points()
    _finish(store, old, [0.9, 0.1])  # the interrupted one still got its result
    assert _by_beta(points.points()[0]) == [(0.2, 0.1), (0.3, 0.3), (0.6, 0.6)]


def test_a_trial_with_a_nan_param_is_left_out_of_the_model(tmp_path):
    space, store, study, _ = _study(tmp_path)
    limits = limits_of(space)

    def encode(params):  # as a row written before params were cleaned of NaN reads back
        return {**_traits(space, limits, params), **({"p0": math.nan} if params["oialr.beta"] == 0.3 else {})}

    points = StudyPoints(store=store, study=study, space=space, encode=encode, keep=128)
    for beta in (0.2, 0.3):
        _finish(store, _run(store, study, beta), [0.9, beta])
    _run(store, study, 0.3)  # running
    got, running = points.points()
    assert _by_beta(got) == [(0.2, 0.2)] and running == []
