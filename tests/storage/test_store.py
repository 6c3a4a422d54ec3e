"""The store: studies, trial life cycle, concurrent numbering, interruption, best queries."""

import threading

import pytest
from sqlalchemy import inspect

from oialr_search.storage import COMPLETE, FAILED, INTERRUPTED, RUNNING, StorageError, Store, StudyNotFound


def _study(store, name="s", direction="minimize"):
    return store.create_study(name=name, space={"raw": {}}, space_path="x.yaml", metric="val_loss",
                              direction=direction, backend="optuna", seed=0, budget=10)


def test_trial_life_cycle_and_best(tmp_path):
    store = Store(f"sqlite:///{tmp_path}/db.sqlite")
    study = _study(store)
    assert store.create_study(name="s", space={}, space_path="", metric="top1", direction="maximize",
                              backend="x", seed=1, budget=1).id == study.id  # existing study is returned
    values = [0.5, 0.2, None, 0.9]
    for v in values:
        t = store.start_trial(study, params={"a": v}, rank=0, island=None, device="cpu")
        assert t.state == RUNNING
        store.finish_trial(t.id, state=COMPLETE if v is not None else FAILED, value=v,
                           metrics={"val_loss": v}, epochs=[{"epoch": 1, "step": 3, "train_loss": 1.0, "val_loss": 0.5,
                                                             "top1": 50.0, "top5": 90.0, "lr": 1e-3,
                                                             "trainable_fraction": 0.3, "seconds": 1.0}],
                           rank_trajectory=[{"step": 1, "ranks": {"a": 3}}], error=None if v else "boom")
    trials = store.trials(study)
    assert [t.number for t in trials] == [0, 1, 2, 3]
    assert trials[2].state == FAILED and trials[2].error == "boom"
    assert store.best_trial(study).value == 0.2
    assert store.epochs(trials[0].id)[0]["top1"] == 50.0
    assert trials[0].rank_trajectory == [{"step": 1, "ranks": {"a": 3}}]
    assert trials[0].duration is not None and trials[0].duration >= 0


def test_interrupted_and_limit(tmp_path):
    store = Store(f"sqlite:///{tmp_path}/db.sqlite")
    study = _study(store)
    running = store.start_trial(study, params={}, rank=0, island=None, device="cpu")
    assert store.mark_interrupted(study) == 1
    assert store.trials(study)[0].state == INTERRUPTED and running.id == store.trials(study)[0].id
    assert store.start_trial(study, params={}, rank=0, island=None, device="cpu", limit=1) is not None
    assert store.start_trial(study, params={}, rank=0, island=None, device="cpu", limit=1) is None


def test_concurrent_writers_lose_nothing(tmp_path):
    url = f"sqlite:///{tmp_path}/db.sqlite"
    study = _study(Store(url))
    errors = []

    def worker(rank):
        try:
            store = Store(url, create=False)
            for i in range(15):
                t = store.start_trial(study, params={"i": i}, rank=rank, island=None, device="cpu")
                store.finish_trial(t.id, state=COMPLETE, value=float(i))
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(r,)) for r in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    trials = Store(url).trials(study)
    assert len(trials) == 120 and sorted(t.number for t in trials) == list(range(120))
    assert all(t.state == COMPLETE for t in trials)


def test_tables_do_not_collide_with_optuna(tmp_path):
    import optuna

    url = f"sqlite:///{tmp_path}/shared.db"
    store = Store(url)
    _study(store)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    ostudy = optuna.create_study(storage=url, study_name="o")
    ostudy.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    names = set(inspect(store.engine).get_table_names())
    assert {"oialr_studies", "oialr_trials", "oialr_trial_epochs", "studies", "trials"} <= names
    assert store.get_study("s").name == "s"


def test_errors(tmp_path):
    with pytest.raises(StorageError, match="not a database URL"):
        Store("definitely not a url")
    with pytest.raises(StorageError, match="no such database file"):
        Store(f"sqlite:///{tmp_path}/missing.db", create=False)
    with pytest.raises(StorageError, match="does not exist"):
        Store(f"sqlite:///{tmp_path}/no/such/dir/x.db")
    store = Store(f"sqlite:///{tmp_path}/db.sqlite")
    _study(store, "alpha")
    with pytest.raises(StudyNotFound, match="no study named 'beta'.*studies here: alpha"):
        store.get_study("beta")
