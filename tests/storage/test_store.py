"""The store: studies, trial life cycle, concurrent numbering, interruption, best queries."""

import threading

import pytest
from sqlalchemy import inspect

from oialr_search.storage import (
    COMPLETE,
    FAILED,
    INTERRUPTED,
    PRUNED,
    RUNNING,
    StorageError,
    Store,
    StudyNotFound,
)


def _study(store, name="s", direction="minimize"):
    return store.create_study(name=name, space={"raw": {}}, space_path="x.yaml", metric="val_loss",
                              direction=direction, backend="optuna", seed=0, budget=10)


def test_trial_life_cycle_and_best(store_url):
    store = Store(store_url)
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
    trials = store.trials(study, full=True)
    assert [t.number for t in trials] == [0, 1, 2, 3]
    assert trials[2].state == FAILED and trials[2].error == "boom"
    assert store.best_trial(study).value == 0.2
    assert store.epochs(trials[0].id)[0]["top1"] == 50.0
    assert trials[0].rank_trajectory == [{"step": 1, "ranks": {"a": 3}}]
    assert trials[0].duration is not None and trials[0].duration >= 0


def test_interrupted_and_limit(store_url):
    store = Store(store_url)
    study = _study(store)
    running = store.start_trial(study, params={}, rank=0, island=None, device="cpu")
    assert store.mark_interrupted(study) == 1
    assert store.trials(study)[0].state == INTERRUPTED and running.id == store.trials(study)[0].id
    assert store.start_trial(study, params={}, rank=0, island=None, device="cpu", limit=1) is not None
    assert store.start_trial(study, params={}, rank=0, island=None, device="cpu", limit=1) is None


def test_concurrent_writers_lose_nothing(store_url):
    url = store_url
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


def test_tables_do_not_collide_with_optuna(store_url):
    import optuna

    url = store_url
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


def test_unknown_study_names_the_known_ones(store_url):
    store = Store(store_url)
    with pytest.raises(StudyNotFound, match="this storage has no studies"):
        store.get_study("beta")
    _study(store, "alpha")
    with pytest.raises(StudyNotFound, match="no study named 'beta'.*studies here: alpha"):
        store.get_study("beta")


def _epoch(epoch, **values):
    base = {"epoch": epoch, "step": 10 * epoch, "train_loss": 1.0, "val_loss": 1.0, "top1": 50.0, "top5": 90.0,
            "lr": 1e-3, "trainable_fraction": 1.0, "seconds": 1.0, "compression": 1.0, "train_seconds": epoch}
    return {**base, **values}


def test_epochs_are_stored_as_they_happen_and_read_per_rung(store_url):
    store = Store(store_url)
    study = _study(store)
    a = store.start_trial(study, params={}, rank=0, island=None, device="cpu")
    b = store.start_trial(study, params={}, rank=1, island=None, device="cpu")
    store.report_epochs(a.id, [_epoch(1, val_loss=0.9)])
    store.report_epochs(b.id, [_epoch(1, val_loss=0.7, top1=60.0)])
    store.report_epochs(a.id, [_epoch(2, val_loss=0.8)])
    # a running (or killed) trial's curve is in the database
    assert [e["val_loss"] for e in store.epochs(a.id)] == [0.9, 0.8]
    assert store.trials(study)[0].last_epoch == 2
    assert sorted(store.epoch_values(study, 1, ("val_loss", "top1"))) == [(0.7, 60.0), (0.9, 50.0)]
    assert store.epoch_values(study, 1, ("val_loss",), exclude_trial=a.id) == [(0.7,)]
    # finishing with the whole history adds only the epochs not reported yet
    store.finish_trial(a.id, state=PRUNED, values=[0.8], value=0.8,
                       epochs=[_epoch(1, val_loss=0.9), _epoch(2, val_loss=0.8)])
    assert len(store.epochs(a.id)) == 2 and store.counts(study) == {PRUNED: 1, RUNNING: 1}


def _slow_and_fast(store):
    """A study with two trials: the first still running, the second (later-numbered) finished."""
    study = _study(store)
    slow, fast = (store.start_trial(study, params={"i": i}, rank=i, island=None, device="cpu") for i in (0, 1))
    store.finish_trial(fast.id, state=COMPLETE, value=1.0, values=[1.0])
    return study, slow, fast


def test_finished_since_returns_trials_that_finish_out_of_order(store_url):
    store = Store(store_url)
    study, first, second = _slow_and_fast(store)
    got, running, mark = store.finished_since(study, 0)
    assert [t.id for t in got] == [second.id] and mark == first.id  # the first is still running
    assert [(t.id, t.params) for t in running] == [(first.id, {"i": 0})]  # what a GP sampler spreads away from
    store.finish_trial(first.id, state=COMPLETE, value=2.0, values=[2.0])  # finishes after a later-numbered one
    got, running, mark = store.finished_since(study, mark)
    assert first.id in [t.id for t in got] and mark == second.id + 1 and running == []


def test_finished_since_reads_again_only_the_states_of_trials_the_caller_had(store_url):
    store = Store(store_url)
    study, slow, fast = _slow_and_fast(store)
    got, running, mark = store.finished_since(study, 0)
    assert [t.id for t in got] == [fast.id] and mark == slow.id
    got, running, mark = store.finished_since(study, mark, seen={fast.id})  # the slow one still pins the watermark
    assert got == [] and [t.id for t in running] == [slow.id] and mark == slow.id


def test_a_trial_that_finishes_between_the_two_reads_of_finished_since_is_returned_once(store_url, monkeypatch):
    """On PostgreSQL each statement reads its own snapshot: another job finishes a running trial and starts a
    new one after the states were read and before the rows are."""
    from sqlalchemy.orm import Session

    from oialr_search.search._finished import FinishedTrials

    store, other = Store(store_url), Store(store_url)
    study, slow, fast = _slow_and_fast(store)
    real, started = Session.execute, []

    def execute(self, stmt, *args, **kwargs):
        result = real(self, stmt, *args, **kwargs)
        if not started and "oialr_trials.state" in str(stmt) and "IN" not in str(stmt).upper().split("WHERE")[-1]:
            rows = result.all()  # the states, read before the change
            other.finish_trial(slow.id, state=COMPLETE, value=2.0, values=[2.0])
            started.append(other.start_trial(study, params={"i": 2}, rank=1, island=None, device="cpu"))
            return type("Rows", (), {"all": lambda _: rows})()
        return result

    monkeypatch.setattr(Session, "execute", execute)
    reader = FinishedTrials(store, study)
    got, running = reader.poll()
    assert started and not {t.id for t in got} & {t.id for t in running}  # never both finished and running
    monkeypatch.undo()
    more, running = reader.poll()
    assert sorted(t.id for t in got + more) == [slow.id, fast.id]  # each once
    assert [t.id for t in running] == [started[0].id]


def test_constraints_keep_infeasible_trials_from_best(store_url):
    store = Store(store_url)
    study = _study(store)
    for value, ok in ((0.1, False), (0.3, True), (0.2, None)):
        t = store.start_trial(study, params={}, rank=0, island=None, device="cpu")
        store.finish_trial(t.id, state=COMPLETE, value=value, values=[value], feasible=ok)
    assert store.best_trial(study).value == 0.2  # NULL feasibility: no constraints were checked
    assert [values for _, values in store.objective_points(study)] == [(0.3,), (0.2,)]


def test_queries_neither_wait_for_nor_block_a_writer(tmp_path):
    import sqlite3
    import time

    url = f"sqlite:///{tmp_path}/db.sqlite"
    store = Store(url)
    study = _study(store)
    t = store.start_trial(study, params={}, rank=0, island=None, device="cpu")
    store.finish_trial(t.id, state=COMPLETE, value=0.5, values=[0.5])
    writer = sqlite3.connect(tmp_path / "db.sqlite", isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")  # a search rank in the middle of a write
    try:
        start = time.monotonic()
        reader = Store(url, create=False, read_only=True)
        assert reader.best_trial(reader.get_study("s")).value == 0.5
        assert reader.counts(study) == {COMPLETE: 1} and len(reader.trials(study)) == 1
        assert time.monotonic() - start < 5
    finally:
        writer.execute("ROLLBACK")
        writer.close()
    with pytest.raises(RuntimeError, match="readonly"):
        reader.start_trial(study, params={}, rank=0, island=None, device="cpu")


def test_non_finite_floats_are_stored_as_none(store_url):
    """A diverged trial's NaN loss (and inf) is stored on every database, as None in the JSON columns and
    the value column alike; the trial does not stay RUNNING (PostgreSQL's JSON rejects NaN)."""
    nan, inf = float("nan"), float("inf")
    store = Store(store_url)
    study = _study(store)
    t = store.start_trial(study, params={"lr": nan, "n": 3}, rank=0, island=None, device="cpu",
                          config={"train": {"lr": inf, "epochs": 2}})
    store.report_epochs(t.id, [_epoch(1, val_loss=nan, train_loss=-inf)])
    store.finish_trial(t.id, state=FAILED, value=nan, values=[nan, inf, 1.5], feasible=None,
                       metrics={"val_loss": nan, "top1": inf, "nested": [1.0, {"x": -inf}], "ok": 2.5},
                       epochs=[_epoch(1), _epoch(2, val_loss=nan)],
                       rank_trajectory=[{"step": 1, "stability": {"a": nan}}], error="objective val_loss is nan")
    (got,) = store.trials(study, full=True)
    assert got.state == FAILED and got.error == "objective val_loss is nan"
    assert got.value is None and got.values == [None, None, 1.5]
    assert got.metrics == {"val_loss": None, "top1": None, "nested": [1.0, {"x": None}], "ok": 2.5}
    assert got.params == {"lr": None, "n": 3} and got.config == {"train": {"lr": None, "epochs": 2}}
    assert got.rank_trajectory == [{"step": 1, "stability": {"a": None}}]
    assert [(e["epoch"], e["val_loss"], e["train_loss"]) for e in store.epochs(got.id)] == [(1, None, None),
                                                                                          (2, None, 1.0)]
    assert store.counts(study) == {FAILED: 1}
    # a COMPLETE trial whose non-objective metric is NaN ranks normally; objective_points reads the JSON
    ok = store.start_trial(study, params={}, rank=0, island=None, device="cpu")
    store.finish_trial(ok.id, state=COMPLETE, value=0.5, values=[0.5], metrics={"val_loss": 0.5, "top1": nan})
    assert store.best_trial(study).id == ok.id and store.objective_points(study) == [(ok.number, (0.5,))]


def test_nan_written_by_earlier_releases_still_reads_on_sqlite(tmp_path):
    """Before, SQLite's JSON columns kept Python's NaN token; such rows read back as NaN."""
    import math
    import sqlite3

    url = f"sqlite:///{tmp_path}/db.sqlite"
    store = Store(url)
    study = _study(store)
    t = store.start_trial(study, params={}, rank=0, island=None, device="cpu")
    store.finish_trial(t.id, state=FAILED, error="x")
    store.engine.dispose()
    conn = sqlite3.connect(tmp_path / "db.sqlite")
    conn.execute("UPDATE oialr_trials SET metrics = '{\"val_loss\": NaN, \"top1\": Infinity}', "
                 "objective_values = '[NaN]' WHERE id = ?", (t.id,))
    conn.commit()
    conn.close()
    (got,) = Store(url, create=False).trials(study)
    assert math.isnan(got.metrics["val_loss"]) and got.metrics["top1"] == float("inf")
    assert math.isnan(got.values[0])


def test_only_a_number_clash_is_retried(store_url, monkeypatch):
    """start_trial retries when another writer took the number, but any other integrity error (here
    a study that does not exist: the foreign key) is raised at once, not as 'could not allocate'."""
    import dataclasses

    from sqlalchemy import bindparam, func, select

    from oialr_search.storage import _writes
    from oialr_search.storage._schema import TrialRow

    store = Store(store_url)
    study = _study(store)
    ghost = dataclasses.replace(study, id=study.id + 1000)
    with pytest.raises(RuntimeError, match="transaction rolled back") as info:
        store.start_trial(ghost, params={}, rank=0, island=None, device="cpu")
    assert "could not allocate" not in str(info.value)
    assert store.start_trial(study, params={}, rank=0, island=None, device="cpu").number == 0
    calls = []
    taken = select(func.max(TrialRow.number)).where(TrialRow.study_id == bindparam("sid"))  # always clashes
    real = _writes.start_trial

    def counting(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(_writes, "_NEXT_NUMBER", taken)
    monkeypatch.setattr(_writes, "start_trial", counting)
    with pytest.raises(RuntimeError, match="could not allocate a trial number"):
        store.start_trial(study, params={}, rank=0, island=None, device="cpu")
    assert len(calls) == 20 and len(store.trials(study)) == 1


def test_a_budget_lowered_by_another_job_holds_for_a_job_that_began_before(store_url):
    """A job's limit is the budget it began with; the stored budget, lowered meanwhile by another job's
    resume --budget, bounds it too (found in review: the first job went on to its own limit, and the study
    ended over its stored budget)."""
    store = Store(store_url)
    study = _study(store)
    store.update_study(study.name, budget=2)
    assert store.start_trial(study, params={}, rank=0, island=None, device="cpu", limit=14) is not None
    assert store.start_trial(study, params={}, rank=0, island=None, device="cpu", limit=14) is not None
    assert store.start_trial(study, params={}, rank=0, island=None, device="cpu", limit=14) is None
    store.engine.dispose()


def test_merging_into_a_studys_space_keeps_what_another_job_wrote_meanwhile(tmp_path):
    """Two jobs set up one study at once: one records its --workdir while the other stores its resume --set;
    neither may write back the space it read before the other's write (a review found the overrides lost)."""
    url = f"sqlite:///{tmp_path}/db.sqlite"
    a, b = Store(url), Store(url)
    a.create_study(name="s", space={"raw": {}, "base": {}}, space_path="", metric="val_loss", direction="minimize",
                   backend="optuna", seed=0, budget=3)
    read_by_b = b.get_study("s")  # b's view, before a's write
    a.update_study_space("s", lambda space: {**space, "overrides": ["train.epochs=1"],
                                             "base": {"train": {"epochs": 1}}})
    b.update_study_space(read_by_b.name, lambda space: {**space, "workdir": "/scratch/w"})
    assert a.get_study("s").space == {"raw": {}, "base": {"train": {"epochs": 1}}, "overrides": ["train.epochs=1"],
                                      "workdir": "/scratch/w"}


def test_a_database_in_a_folder_named_with_a_hash_opens_read_only(tmp_path):
    """The read-only URI went through a SQLAlchemy URL, which decoded the path's %23 back to '#': SQLite read
    the rest as a fragment and opened (creating) a truncated path, read-write (a review)."""
    folder = tmp_path / "h#x"
    folder.mkdir()
    url = f"sqlite:///{folder}/db.sqlite"
    writer = Store(url)
    writer.create_study(name="s", space={"raw": {}}, space_path="", metric="val_loss", direction="minimize",
                        backend="optuna", seed=0, budget=3)
    writer.engine.dispose()
    reader = Store(url, create=False, read_only=True)
    assert reader.get_study("s").name == "s"
    reader.engine.dispose()
    assert [p.name for p in tmp_path.iterdir()] == ["h#x"] and [p.name for p in folder.iterdir()] == ["db.sqlite"]
