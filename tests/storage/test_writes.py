"""The per-trial writes: the raw sqlite3 executor writes exactly the rows SQLAlchemy Core writes."""

import sqlite3

import pytest
from sqlalchemy import text

from oialr_search.storage import COMPLETE, FAILED, PRUNED, Store
from oialr_search.storage._writes import Transactions

TABLES = ("oialr_trials", "oialr_trial_payloads", "oialr_trial_epochs")
# clock values and per-run tokens: compared for type and length only
TIME_COLUMNS = {"started", "finished", "duration", "heartbeat", "owner"}


def _epoch(e, **over):
    return {"epoch": e, "step": 10 * e, "train_loss": 1.0 / e, "val_loss": 0.5, "top1": 50.0 + e, "top5": 90.0,
            "lr": 1e-3, "trainable_fraction": 0.3, "seconds": 1.0, "compression": 0.7, "train_seconds": 1.0 * e,
            **over}


def _workload(store):
    """Every write path: numbering, budget limit, reports, NaN, finish with and without payloads."""
    study = store.create_study(name="s", space={"raw": {}}, space_path="", metric="top1", direction="maximize",
                               backend="optuna", seed=0, budget=3,
                               objectives=[{"metric": "top1", "direction": "maximize"},
                                           {"metric": "trainable_fraction", "direction": "minimize"}])
    a = store.start_trial(study, params={"x": 0.5, "n": 3, "s": "é"}, rank=1, island=2, device="cuda:1",
                          config={"train": {"epochs": 3}, "list": [1, 2.5, None]}, limit=3)
    store.report_epochs(a.id, [_epoch(1), _epoch(2, val_loss=float("nan"))])
    store.finish_trial(a.id, state=COMPLETE, value=53.0, values=[53.0, 0.3], feasible=True,
                       metrics={"top1": 53.0, "val_loss": float("inf")},
                       epochs=[_epoch(1), _epoch(2), _epoch(3)], rank_trajectory=[{"step": 4, "ranks": {"l": 2}}])
    b = store.start_trial(study, params={"x": 0.1}, rank=0, island=None, device="cpu", limit=3)
    store.report_epochs(b.id, [_epoch(1), _epoch(2)])
    # a new run of the trial (restarted from scratch): its epochs replace the stored ones
    store.finish_trial(b.id, state=PRUNED, value=40.0, values=[40.0, 1.0], feasible=False, metrics=None,
                       epochs=[_epoch(1, train_loss=0.25)], rank_trajectory=None, rerun_from=1)
    c = store.start_trial(study, params={}, rank=0, island=None, device="cpu", config=None, limit=3)
    store.finish_trial(c.id, state=FAILED, error="boom: ü")
    assert store.start_trial(study, params={}, rank=0, island=None, device="cpu", limit=3) is None  # budget full
    return [a.number, b.number, c.number]


def _dump(path):
    conn = sqlite3.connect(path)
    out = {}
    for table in TABLES:
        cur = conn.execute(f"SELECT * FROM {table} ORDER BY 1, 2")
        names = [d[0] for d in cur.description]
        out[table] = [{n: (type(v).__name__, len(v) if isinstance(v, str) else None) if n in TIME_COLUMNS else v
                       for n, v in zip(names, row, strict=True)} for row in cur.fetchall()]
    conn.close()
    return out


def test_sqlite_executor_writes_the_rows_core_writes(tmp_path, monkeypatch):
    dumps = []
    for core in (True, False):
        path = tmp_path / f"{core}.db"
        store = Store(f"sqlite:///{path}")
        store._tx = Transactions(store.engine, store.url, core=core)
        assert store._tx.raw is not core
        assert _workload(store) == [0, 1, 2]
        store.engine.dispose()
        dumps.append(_dump(path))
    assert dumps[0] == dumps[1]
    assert len(dumps[0]["oialr_trial_epochs"]) == 4 and dumps[0]["oialr_trial_epochs"][1]["val_loss"] is None
    assert dumps[0]["oialr_trial_epochs"][3]["train_loss"] == 0.25  # the new run's, its old epochs 1 and 2 gone


def _read(store):
    """What the store reads back of the workload, less wall-clock times and ids."""
    study = store.get_study("s")
    trials = [{k: v for k, v in vars(t).items() if k not in {"id", "started", "finished", "duration"}}
              for t in store.trials(study, full=True)]
    return trials, [store.epochs(t.id) for t in store.trials(study)], store.objective_points(study)


def test_every_database_reads_back_what_sqlite_does(tmp_path, postgres_schema_url):
    """The same writes (NaN and inf included) read back the same from PostgreSQL as from SQLite."""
    reads = []
    for url in (f"sqlite:///{tmp_path}/db.sqlite", postgres_schema_url):
        store = Store(url)
        assert _workload(store) == [0, 1, 2]
        reads.append(_read(store))
        store.engine.dispose()
    assert reads[0] == reads[1]
    assert reads[0][0][0]["metrics"] == {"top1": 53.0, "val_loss": None}


def _one_running_trial(tmp_path, request, db, core):
    """(store, study, trial): a study with one RUNNING trial, on SQLite (raw or Core writes) or PostgreSQL."""
    url = f"sqlite:///{tmp_path}/db.sqlite" if db == "sqlite" else request.getfixturevalue("postgres_schema_url")
    store = Store(url)
    store._tx = Transactions(store.engine, store.url, core=core)
    study = store.create_study(name="s", space={"raw": {}}, space_path="", metric="top1", direction="maximize",
                               backend="optuna", seed=0, budget=3)
    return store, study, store.start_trial(study, params={}, rank=0, island=None, device="cpu")


@pytest.mark.parametrize(("db", "core"), [("sqlite", True), ("sqlite", False), ("postgres", True)])
def test_a_failed_write_rolls_back_and_says_so(tmp_path, request, db, core):
    store, study, t = _one_running_trial(tmp_path, request, db, core)
    store.report_epochs(t.id, [_epoch(1)])
    with pytest.raises(RuntimeError, match="transaction rolled back") as info:
        store.report_epochs(t.id, [_epoch(2), _epoch(2)])  # epoch 2 twice: unique (trial, epoch)
    assert "IntegrityError" in type(info.value.__cause__).__name__
    assert [e["epoch"] for e in store.epochs(t.id)] == [1]  # epoch 2 rolled back with it
    assert store.get_trial(study, 0).last_epoch == 1
    store.finish_trial(t.id, state=COMPLETE, value=1.0, epochs=[_epoch(1), _epoch(2)])  # the store still works
    assert [e["epoch"] for e in store.epochs(t.id)] == [1, 2]


@pytest.mark.parametrize("core", [True, False])
def test_looking_for_dead_trials_never_waits_for_the_write_lock(tmp_path, monkeypatch, core):
    """Every rank asks before every trial: with none dead it reads, so a writer holding the lock (here
    for good) does not stall it; a dead one is still claimed once the lock is free."""
    monkeypatch.setattr("oialr_search.storage._sqlite.BUSY_TIMEOUT_MS", 500)  # a wait fails fast, not in 60 s
    path = tmp_path / "db.sqlite"
    store = Store(f"sqlite:///{path}")
    store._tx = Transactions(store.engine, store.url, core=core)
    study = store.create_study(name="s", space={"raw": {}}, space_path="", metric="top1", direction="maximize",
                               backend="optuna", seed=0, budget=3)
    t = store.start_trial(study, params={}, rank=0, island=None, device="cpu")
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        assert store.claim_dead(study, grace=3600, rank=1, device="cpu") is None  # no lock wanted
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    store.release(t.id)  # dead at once
    claimed = store.claim_dead(study, grace=3600, rank=1, device="cpu")
    assert claimed is not None and claimed.id == t.id and claimed.rank == 1
    assert store.claim_dead(study, grace=3600, rank=1, device="cpu") is None


def test_looking_for_dead_trials_reads_on_postgres_too(postgres_schema_url):
    """The read path on PostgreSQL (Core, no write transaction): none found while the trial beats, the
    released one claimed, and no transaction left open on the connection."""
    store = Store(postgres_schema_url)
    study = store.create_study(name="s", space={"raw": {}}, space_path="", metric="top1", direction="maximize",
                               backend="optuna", seed=0, budget=3)
    t = store.start_trial(study, params={}, rank=0, island=None, device="cpu")
    assert store.claim_dead(study, grace=3600, rank=1, device="cpu") is None
    store.release(t.id)
    claimed = store.claim_dead(study, grace=3600, rank=1, device="cpu")
    assert claimed is not None and claimed.id == t.id and claimed.rank == 1
    with store.engine.connect() as conn:
        open_tx = conn.execute(text("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                                    "AND state LIKE 'idle in transaction%'")).scalar()
    assert open_tx == 0
    store.engine.dispose()


def test_a_connection_that_fails_to_open_is_a_storage_error_like_the_transactions(tmp_path, monkeypatch):
    """The raw SQLite path got its connection outside its error handling: a locked database in the connect
    events' PRAGMAs escaped as SQLAlchemy's error, which the callers that wait out a busy database (a
    trial's epoch report, its final write) do not catch, so the rank died (found in review)."""
    from sqlalchemy.exc import OperationalError

    from oialr_search.storage import transient

    store = Store(f"sqlite:///{tmp_path}/db.sqlite")
    study = store.create_study(name="s", space={"raw": {}}, space_path="", metric="top1", direction="maximize",
                               backend="optuna", seed=0, budget=3)
    t = store.start_trial(study, params={}, rank=0, island=None, device="cpu")

    def locked():
        orig = sqlite3.OperationalError("database is locked")
        raise OperationalError("PRAGMA journal_mode=WAL", {}, orig) from orig  # as SQLAlchemy raises it

    monkeypatch.setattr(store.engine, "raw_connection", locked)
    for attempt in (lambda: store.report_epochs(t.id, [_epoch(1)]),
                    lambda: store.claim_dead(study, grace=1.0, rank=0, device="cpu")):
        with pytest.raises(RuntimeError, match="connecting failed") as info:
            attempt()
        assert transient(info.value)

    def cannot_open():  # no file handle left: not a lock, and still nothing to do with the outcome stored
        orig = sqlite3.OperationalError("unable to open database file")
        raise OperationalError("PRAGMA journal_mode=WAL", {}, orig) from orig

    monkeypatch.setattr(store.engine, "raw_connection", cannot_open)
    with pytest.raises(RuntimeError, match="connecting failed") as info:
        store.finish_trial(t.id, state=COMPLETE, value=1.0)
    assert transient(info.value)  # so the trial is left to be resumed, not stored FAILED

    def read_only():  # ... but SQLite saying the file is read-only, damaged or full does not pass
        orig = sqlite3.OperationalError("attempt to write a readonly database")
        orig.sqlite_errorcode = 8  # SQLITE_READONLY
        raise OperationalError("PRAGMA journal_mode=WAL", {}, orig) from orig

    monkeypatch.setattr(store.engine, "raw_connection", read_only)
    with pytest.raises(RuntimeError, match="connecting failed") as info:
        store.finish_trial(t.id, state=COMPLETE, value=1.0)
    assert not transient(info.value)


@pytest.mark.parametrize(("db", "core"), [("sqlite", True), ("sqlite", False), ("postgres", True)])
def test_a_report_retried_after_its_commit_went_through_adds_nothing(tmp_path, request, db, core):
    """A dropped connection can lose the answer to a commit that went through; the reporter then keeps the
    epochs and sends them again, which failed on the unique (trial, epoch) and so failed the trial."""
    store, study, t = _one_running_trial(tmp_path, request, db, core)
    store.report_epochs(t.id, [_epoch(1), _epoch(2)])
    store.report_epochs(t.id, [_epoch(1), _epoch(2)])  # the retry
    store.report_epochs(t.id, [_epoch(1), _epoch(2), _epoch(3)])  # and the next flush, with it still pending
    assert [e["epoch"] for e in store.epochs(t.id)] == [1, 2, 3] and store.get_trial(study, 0).last_epoch == 3
    store.engine.dispose()


@pytest.mark.parametrize(("db", "core"), [("sqlite", True), ("sqlite", False), ("postgres", True)])
def test_a_new_run_of_a_trial_replaces_its_stored_epochs(tmp_path, request, db, core):
    """A trial restarted from scratch reports its epochs again: from the first of them on, the stored epochs
    go (in the same transaction), so its curve is the new run's, not two runs joined."""
    store, study, t = _one_running_trial(tmp_path, request, db, core)
    store.report_epochs(t.id, [_epoch(e) for e in (1, 2, 3)])  # the dead run's
    for _ in range(2):  # and a retry whose commit went through: the same
        store.report_epochs(t.id, [_epoch(1, train_loss=9.0)], rerun_from=1)
        assert [(e["epoch"], e["train_loss"]) for e in store.epochs(t.id)] == [(1, 9.0)]
        assert store.get_trial(study, 0).last_epoch == 1
    store.report_epochs(t.id, [_epoch(2, train_loss=8.0)])
    store.report_epochs(t.id, [], rerun_from=2)  # nothing new yet: the stored epoch 2 goes all the same
    assert store.get_trial(study, 0).last_epoch == 1
    # the final write of a run whose rerun was never flushed (a busy database) replaces the stored epochs too
    store.finish_trial(t.id, state=COMPLETE, value=1.0, epochs=[_epoch(1, train_loss=7.0), _epoch(2, train_loss=6.0)],
                       rerun_from=1)
    assert [(e["epoch"], e["train_loss"]) for e in store.epochs(t.id)] == [(1, 7.0), (2, 6.0)]
    assert store.get_trial(study, 0).last_epoch == 2
    store.engine.dispose()
