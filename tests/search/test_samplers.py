"""The Optuna backend's samplers: the default GP-then-TPE choice, and what the GP is given that TPE is
not (other processes' running trials, pruned trials projected to the end of training)."""

import optuna
import pytest

from oialr_search.search import Scored, load_space
from oialr_search.search._samplers import AutoSampler, make_sampler
from oialr_search.search._space import SpaceError
from oialr_search.storage import COMPLETE, PRUNED

from .test_multiobjective import PARAMS, _optuna_run
from .test_search_cli import write_space

Running, Complete, Pruned, Fail = (optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.COMPLETE,
                                   optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.FAIL)


def _epochs(*values):
    return [{"epoch": e, "val_loss": v} for e, v in enumerate(values, 1)]


def _complete(store, mine):
    store.finish_trial(mine.id, state=COMPLETE, value=1.0, values=[1.0])
    return Scored(COMPLETE, [1.0], None, None), {"val_loss": 1.0}


def test_the_default_sampler_is_auto_and_gp_is_selectable(tmp_path):
    assert load_space(write_space(tmp_path)).sampler == {"type": "auto"}
    space = load_space(write_space(tmp_path, extra="sampler: {type: gp, startup_trials: 3}"))
    sampler = make_sampler(space.sampler, 0)
    assert isinstance(sampler, optuna.samplers.GPSampler) and sampler._n_startup_trials == 3
    assert isinstance(make_sampler({"type": "auto"}, 0), AutoSampler)
    assert isinstance(make_sampler({"type": "tpe"}, 0), optuna.samplers.TPESampler)


def test_auto_sampler_uses_the_gp_until_enough_trials_completed_then_tpe():
    gp = optuna.samplers.GPSampler(seed=0, n_startup_trials=2)
    tpe = optuna.samplers.TPESampler(seed=0, n_startup_trials=2)
    auto = AutoSampler(gp=gp, tpe=tpe, gp_trials=4)
    study = optuna.create_study(sampler=auto)
    x = {"x": optuna.distributions.FloatDistribution(0, 1)}
    used = []
    for _ in range(3):
        trial = study.ask(x)
        used.append(auto.current)
        study.tell(trial, (trial.params["x"] - 0.3) ** 2)
    study.tell(study.ask(x), state=Fail)  # failed, running and pruned trials do not count towards the switch
    study.add_trial(optuna.trial.create_trial(params={"x": 0.5}, distributions=x, state=Running))
    study.add_trial(optuna.trial.create_trial(params={"x": 0.6}, distributions=x, state=Pruned))
    for _ in range(3):
        trial = study.ask(x)
        used.append(auto.current)
        study.tell(trial, (trial.params["x"] - 0.3) ** 2)
    assert used == [gp] * 4 + [tpe] * 2


def test_the_gp_sees_other_processes_running_trials_until_they_finish(tmp_path, monkeypatch):
    """While another rank trains a trial, this process's GP holds it as RUNNING (its q-batch expected
    improvement then proposes away from it); once it finishes, the placeholder is FAIL and the result is
    added as COMPLETE."""
    trials, seen = {}, {}

    def before(store, study):
        trials["other"] = store.start_trial(study, params=PARAMS, rank=1, island=None, device="cpu")

    def meanwhile(store, ostudy):
        seen["while"] = [(t.state, t.params) for t in ostudy.trials]
        store.finish_trial(trials["other"].id, state=COMPLETE, value=0.3, values=[0.3])

    ostudy = _optuna_run(tmp_path, monkeypatch, before, _complete, meanwhile)
    assert (Running, PARAMS) in seen["while"]  # the placeholder, beside this process's own running trial
    states = [(t.state, t.values) for t in ostudy.trials][:-1]  # the last: the ask that found the budget used
    assert states.count((Fail, None)) == 1 and (Complete, [0.3]) in states
    assert sorted(t.values[0] for t in ostudy.trials if t.state == Complete) == [0.3, 1.0, 1.0]


def test_tpe_gets_no_placeholders(tmp_path, monkeypatch):
    trials = {}

    def before(store, study):
        trials["other"] = store.start_trial(study, params=PARAMS, rank=1, island=None, device="cpu")

    ostudy = _optuna_run(tmp_path, monkeypatch, before, _complete, extra="sampler: tpe",
                         meanwhile=lambda store: store.finish_trial(trials["other"].id, state=COMPLETE, value=0.3,
                                                                    values=[0.3]))
    assert [t.state for t in ostudy.trials][:-1] == [Complete] * 3


def test_the_gp_learns_from_a_pruned_trial_by_its_projection(tmp_path, monkeypatch):
    """Another rank's trial pruned at epoch 1 (0.9 then) reaches the GP as COMPLETE with its value
    projected by the completed trial's change from epoch 1 to its end (0.8 → 0.5: -0.3), so 0.6."""
    def before(store, study):
        done = store.start_trial(study, params={**PARAMS, "oialr.beta": 0.2}, rank=1, island=None, device="cpu")
        store.finish_trial(done.id, state=COMPLETE, value=0.5, values=[0.5], epochs=_epochs(0.8, 0.6, 0.5))
        pruned = store.start_trial(study, params=PARAMS, rank=1, island=None, device="cpu")
        store.finish_trial(pruned.id, state=PRUNED, value=0.9, values=[0.9], epochs=_epochs(0.9))

    ostudy = _optuna_run(tmp_path, monkeypatch, before, _complete, own=1)
    assert sorted(t.values[0] for t in ostudy.trials if t.state == Complete) == pytest.approx([0.5, 0.6, 1.0])
    assert not [t for t in ostudy.trials if t.state == Pruned]


def test_a_pruned_trial_with_nothing_to_project_with_waits_for_a_completed_trial(tmp_path, monkeypatch):
    """This process's own trial is pruned at epoch 1 before any trial completed: told PRUNED (the GP
    ignores it) and added as COMPLETE with its projection once another rank's trial completes."""
    trials = {}

    def before(store, study):
        trials["other"] = store.start_trial(study, params={**PARAMS, "oialr.beta": 0.2}, rank=1, island=None,
                                            device="cpu")

    def finish(store, mine):
        if not trials.get("mine"):
            trials["mine"] = mine
            store.finish_trial(mine.id, state=PRUNED, value=0.9, values=[0.9], epochs=_epochs(0.9))
            return Scored(PRUNED, [0.9], None, None, stopped_at=1), {"val_loss": 0.9}
        store.finish_trial(trials["other"].id, state=COMPLETE, value=0.4, values=[0.4],
                           epochs=_epochs(0.7, 0.4))  # completes while this process trains its second trial
        return _complete(store, mine)

    ostudy = _optuna_run(tmp_path, monkeypatch, before, finish, own=2)
    assert [t.intermediate_values for t in ostudy.trials if t.state == Pruned] == [{1: 0.9}]
    assert sorted(t.values[0] for t in ostudy.trials if t.state == Complete) == pytest.approx([0.4, 0.6, 1.0])


def test_a_projected_pruned_trial_is_judged_by_the_constraints_on_its_projection(tmp_path, monkeypatch):
    """A constraint on an objective is judged on the projected value; one on any other metric (not
    projected) counts as violated, as for Propulate."""
    extra = "constraints: {val_loss: {max: 0.65}, trainable_fraction: {max: 0.5}}"

    def before(store, study):
        done = store.start_trial(study, params={**PARAMS, "oialr.beta": 0.2}, rank=1, island=None, device="cpu")
        store.finish_trial(done.id, state=COMPLETE, value=0.5, values=[0.5], epochs=_epochs(0.8, 0.5),
                           metrics={"val_loss": 0.5, "trainable_fraction": 0.1}, feasible=True)
        pruned = store.start_trial(study, params=PARAMS, rank=1, island=None, device="cpu")
        store.finish_trial(pruned.id, state=PRUNED, value=0.9, values=[0.9], epochs=_epochs(0.9),
                           metrics={"val_loss": 0.9, "trainable_fraction": 0.1}, feasible=False)

    ostudy = _optuna_run(tmp_path, monkeypatch, before, _complete, own=1, extra=extra)
    projected = next(t for t in ostudy.trials if t.params == PARAMS)
    assert projected.state == Complete and projected.values == pytest.approx([0.6])
    assert list(projected.constraints.values()) == pytest.approx([0.6 - 0.65, 1.0])


def _watch_feeds(monkeypatch):
    """The backend's _Feed objects, as run_optuna makes them."""
    from oialr_search.search import _optuna_backend

    feeds, real = [], _optuna_backend._Feed
    monkeypatch.setattr(_optuna_backend, "_Feed", lambda *a: feeds.append(real(*a)) or feeds[-1])
    return feeds


GP_EARLY = "sampler: {type: gp, startup_trials: 2}"  # the GP fits a model from the second completed trial


def _done(store, study, beta, value, **kw):
    t = store.start_trial(study, params={**PARAMS, "oialr.beta": beta}, rank=1, island=None, device="cpu")
    store.finish_trial(t.id, state=COMPLETE, value=value, values=[value], epochs=_epochs(value + 0.3, value), **kw)
    return t


def test_the_gp_fits_with_running_trials_and_two_sided_constraints_on_a_missing_metric(tmp_path, monkeypatch):
    """The GP's model runs (past its startup trials) with another rank's running trial and a two-sided
    constraint on a metric one trial lacks: every trial has as many constraint values (one per bound),
    which the GP requires (it raised 'The number of constraints must be the same for all trials')."""
    extra = GP_EARLY + "\nconstraints: {trainable_fraction: {min: 0.01, max: 0.99}}"
    fitted = []
    real = optuna.samplers.GPSampler._sample_relative_impl
    monkeypatch.setattr(optuna.samplers.GPSampler, "_sample_relative_impl",
                        lambda self, study, done, running, space: fitted.append(len(running)) or
                        real(self, study, done, running, space))

    def before(store, study):
        _done(store, study, 0.2, 0.5, metrics={"val_loss": 0.5, "trainable_fraction": 0.5}, feasible=True)
        _done(store, study, 0.3, 0.6, metrics={"val_loss": 0.6}, feasible=False)  # no trainable_fraction
        store.start_trial(study, params=PARAMS, rank=1, island=None, device="cpu")  # runs on

    feeds = _watch_feeds(monkeypatch)
    ostudy = _optuna_run(tmp_path, monkeypatch, before, _complete, own=2, extra=extra)
    assert fitted and fitted[0] == 1  # the model ran, knowing the running trial
    assert feeds[0].complete == len([t for t in ostudy.trials if t.state == Complete]) == 4  # its own counted
    assert {len(t.constraints) for t in ostudy.trials if t.state == Complete} == {2}


def test_a_diverged_pruned_trial_reaches_the_study_as_pruned(tmp_path, monkeypatch):
    """A trial pruned for a NaN value has nothing to project: it is added PRUNED at once (not kept
    waiting for a projection that cannot come)."""
    import math

    def before(store, study):
        _done(store, study, 0.2, 0.5)
        nan = store.start_trial(study, params=PARAMS, rank=1, island=None, device="cpu")
        store.finish_trial(nan.id, state=PRUNED, value=math.nan, values=[math.nan], epochs=_epochs(math.nan))

    ostudy = _optuna_run(tmp_path, monkeypatch, before, _complete, own=1)
    assert [t.params for t in ostudy.trials if t.state == Pruned] == [PARAMS]


def test_once_auto_has_switched_to_tpe_it_gets_trials_as_tpe_does(tmp_path, monkeypatch):
    """Past the switch: pruned trials as PRUNED with their last value, no placeholders."""
    from oialr_search.search import _samplers

    monkeypatch.setattr(_samplers, "GP_TRIALS", 1)
    trials = {}

    def before(store, study):
        _done(store, study, 0.2, 0.5)
        pruned = store.start_trial(study, params=PARAMS, rank=1, island=None, device="cpu")
        store.finish_trial(pruned.id, state=PRUNED, value=0.9, values=[0.9], epochs=_epochs(0.9))
        trials["other"] = store.start_trial(study, params={**PARAMS, "oialr.beta": 0.3}, rank=1, island=None,
                                            device="cpu")

    ostudy = _optuna_run(tmp_path, monkeypatch, before, _complete, own=1, meanwhile=lambda store: None)
    assert [t.intermediate_values for t in ostudy.trials if t.state == Pruned] == [{1: 0.9}]
    assert not [t for t in ostudy.trials[:-1] if t.state in (Running, Fail)]


def test_the_projections_of_a_resume_read_each_stop_epoch_once(tmp_path, monkeypatch):
    """Rebuilding the sampler's study projects every pruned trial, one read per stop epoch, not per trial
    (a review timed 29 s per rank for 3,000 pruned trials with a read per trial)."""
    from oialr_search.storage import Store

    reads = []
    real = Store.completed_curves_at
    monkeypatch.setattr(Store, "completed_curves_at", lambda self, *a: reads.append(a[1]) or real(self, *a))

    def before(store, study):
        _done(store, study, 0.2, 0.5)
        for i in range(6):
            t = store.start_trial(study, params={**PARAMS, "oialr.beta": 0.1 + i / 100}, rank=1, island=None,
                                  device="cpu")
            store.finish_trial(t.id, state=PRUNED, value=0.9, values=[0.9], epochs=_epochs(*[0.9] * (1 + i % 2)))

    ostudy = _optuna_run(tmp_path, monkeypatch, before, _complete, own=1)
    assert sorted(reads) == [1, 2]
    assert len([t for t in ostudy.trials if t.state == Complete]) == 8  # 1 + 6 projected + its own


def test_a_study_stored_without_a_sampler_keeps_tpe(tmp_path):
    """A study stored by a release whose default was TPE (its space dict has no sampler) keeps TPE; a new
    one stores its sampler, so a later default cannot change it either."""
    from oialr_search.plots._report import settings_section
    from oialr_search.search import SearchSpace

    space = load_space(write_space(tmp_path))
    stored = space.to_dict()
    assert stored["sampler"] == {"type": "auto"} and SearchSpace.from_dict(stored).sampler == {"type": "auto"}
    old = {k: v for k, v in stored.items() if k != "sampler"}
    assert SearchSpace.from_dict(old).sampler == {"type": "tpe"}
    named = load_space(write_space(tmp_path, extra="sampler: gp"), ).to_dict()
    assert SearchSpace.from_dict({k: v for k, v in named.items() if k != "sampler"}).sampler == {"type": "gp"}

    def report(stored_space):
        class _Study:
            space, objectives, constraints, budget, seed, space_path = stored_space, [], {}, 4, 0, ""
            created = __import__("datetime").datetime(2026, 1, 1)

            @staticmethod
            def backends_text(_):
                return "optuna"

        return "".join(settings_section(_Study, {}))

    assert "<td>sampler (Optuna backend)</td><td>tpe</td>" in report(old)
    assert "<td>sampler (Optuna backend)</td><td>auto</td>" in report(stored)  # what it stored, not the file


@pytest.mark.parametrize("extra", ["", "sampler: tpe"])
def test_an_own_pruned_trial_waiting_at_the_switch_reaches_tpe_once(tmp_path, monkeypatch, extra):
    """This process's pruned trial waits for a projection; auto switches to TPE before it gets one: TPE
    holds it once (as PRUNED), as with sampler: tpe."""
    from oialr_search.search import _samplers

    monkeypatch.setattr(_samplers, "GP_TRIALS", 2)
    trials = {}

    def before(store, study):
        for name, beta in (("a", 0.2), ("b", 0.3)):
            trials[name] = store.start_trial(study, params={**PARAMS, "oialr.beta": beta}, rank=1, island=None,
                                             device="cpu")

    def finish(store, mine):
        if "mine" not in trials:
            trials["mine"] = mine
            store.finish_trial(mine.id, state=PRUNED, value=0.9, values=[0.9], epochs=_epochs(0.9))
            return Scored(PRUNED, [0.9], None, None, stopped_at=1), {"val_loss": 0.9}
        for name, value in (("a", 0.4), ("b", 0.5)):  # two complete: the next proposal is TPE's
            store.finish_trial(trials[name].id, state=COMPLETE, value=value, values=[value],
                               epochs=_epochs(value + 0.3, value))
        return _complete(store, mine)

    ostudy = _optuna_run(tmp_path, monkeypatch, before, finish, own=2, extra=extra)
    assert [t.intermediate_values for t in ostudy.trials if t.state == Pruned] == [{1: 0.9}]


@pytest.mark.parametrize("extra", ["", "sampler: tpe", "sampler: nsga2"])
def test_a_stored_trial_outside_the_space_is_left_out(tmp_path, monkeypatch, extra):
    """A trial whose value the space no longer holds (the file was edited before a resume) is not given to
    the sampler, and the search goes on."""
    def before(store, study):
        _done(store, study, 0.9, 0.5)  # oialr.beta is searched on [0.05, 0.5]

    ostudy = _optuna_run(tmp_path, monkeypatch, before, _complete, own=1, extra=extra)
    assert [t.values for t in ostudy.trials][:-1] == [[1.0]]


def test_a_study_keeps_its_stored_sampler_through_resume_set(tmp_path):
    """What a study stored wins over what its file would give now: the sampler stored with it, or for a
    study of an earlier release (none stored) TPE unless its file named one; a --set on resume keeps it."""
    from oialr_search.search import SearchSpace
    from oialr_search.search._runner import _updated_space

    stored = load_space(write_space(tmp_path)).to_dict()
    assert SearchSpace.from_dict({**stored, "sampler": {"type": "gp"}}).sampler == {"type": "gp"}
    old = {k: v for k, v in stored.items() if k != "sampler"}
    assert SearchSpace.from_dict(old).with_overrides(["train.batch_size=64"]).sampler == {"type": "tpe"}
    assert _updated_space(old, ["train.batch_size=64"], None)["sampler"] == {"type": "tpe"}
    null = {**old, "raw": {**old["raw"], "sampler": None}}  # `sampler:` left empty: the default then, TPE
    assert SearchSpace.from_dict(null).sampler == {"type": "tpe"}
    with pytest.raises(SpaceError, match="stored sampler {'type': 'cmaes'} is not one this release can run "
                                         r"\(must be one of auto, gp, tpe, nsga2, random"):
        SearchSpace.from_dict({**stored, "sampler": {"type": "cmaes"}})  # a later release's
    with pytest.raises(SpaceError, match=r"\(kernel: unknown option for sampler gp; it takes startup_trials\)"):
        SearchSpace.from_dict({**stored, "sampler": {"type": "gp", "kernel": "rbf"}})  # or a later option


def test_resume_set_on_a_study_of_an_earlier_release_keeps_tpe(tmp_path):
    """Through the CLI: a study stored without a sampler (an earlier release) is resumed with --set; it
    searched with TPE, and the stored space now says so."""
    import json
    import sqlite3

    from .test_search_cli import run

    write_space(tmp_path, epochs=1)
    assert run(["run", "space.yaml", "--study", "s", "--budget", "1"], tmp_path).returncode == 0
    con = sqlite3.connect(tmp_path / "oialr_search.db")
    space = json.loads(con.execute("SELECT space FROM oialr_studies").fetchone()[0])
    del space["sampler"]  # as the earlier release stored it
    con.execute("UPDATE oialr_studies SET space = ?", (json.dumps(space),))
    con.commit()
    resumed = run(["resume", "--study", "s", "--budget", "2", "--set", "train.batch_size=64"], tmp_path)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    space = json.loads(con.execute("SELECT space FROM oialr_studies").fetchone()[0])
    assert space["sampler"] == {"type": "tpe"} and space["overrides"] == ["train.batch_size=64"]
    assert "optuna (tpe) on 1 rank(s)" in resumed.stdout  # the run's first line names the sampler
