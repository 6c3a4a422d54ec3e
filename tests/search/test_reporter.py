"""The epoch reporter of a resumed trial: the epochs its checkpoint restored are not stored twice, and a
run that restarted from scratch replaces the dead run's stored epochs instead of joining them."""

import sqlite3

import pytest

from oialr_search.search import ASHAPruner, NopPruner
from oialr_search.search._objectives import objectives_from
from oialr_search.search._reporter import REPLAYED, EpochReporter
from oialr_search.storage import COMPLETE, Store

OBJECTIVES = objectives_from([{"metric": "val_loss", "direction": "minimize"}])


def _record(epoch, loss):
    return {"epoch": epoch, "step": epoch, "train_loss": loss, "val_loss": loss, "top1": 50.0, "top5": 90.0,
            "lr": 1e-3, "trainable_fraction": 0.5, "seconds": 1.0, "compression": 0.5, "train_seconds": float(epoch)}


@pytest.fixture()
def dead_run(tmp_path):
    """(store, study, trial): a RUNNING trial whose dead run stored epochs 1-3 (val_loss 3.0 each)."""
    store = Store(f"sqlite:///{tmp_path}/db.sqlite")
    study = store.create_study(name="s", space={"raw": {}}, space_path="", metric="val_loss", direction="minimize",
                               backend="optuna", seed=0, budget=4)
    trial = store.start_trial(study, params={}, rank=0, island=None, device="cpu")
    store.report_epochs(trial.id, [_record(e, 3.0) for e in (1, 2, 3)])
    yield store, study, trial
    store.engine.dispose()


def _reporter(store, study, trial, pruner=None):
    return EpochReporter(store=store, study=study, trial_id=trial.id, objectives=OBJECTIVES,
                         pruner=pruner or NopPruner(), max_epochs=5, stored_epochs=3, flush_seconds=0.0)


def _stored(store, trial):
    return [(e["epoch"], e["val_loss"]) for e in store.epochs(trial.id)]


def test_the_epochs_a_checkpoint_restored_are_skipped_and_the_run_goes_on(dead_run):
    store, study, trial = dead_run
    reporter = _reporter(store, study, trial)
    # (a replay's values are the stored ones; other values here show that the stored rows are kept as they are)
    assert all(reporter({**_record(e, 2.5), REPLAYED: True}) for e in (1, 2, 3))
    assert reporter({**_record(4, 2.0), REPLAYED: True})  # restored, but never stored (the job died first)
    assert reporter(_record(5, 1.0)) and reporter.rerun_from is None
    assert _stored(store, trial) == [(1, 3.0), (2, 3.0), (3, 3.0), (4, 2.0), (5, 1.0)]
    assert REPLAYED not in store.epochs(trial.id)[3]


def test_a_run_restarted_from_scratch_replaces_the_stored_epochs(dead_run):
    store, study, trial = dead_run
    reporter = _reporter(store, study, trial)
    assert reporter(_record(1, 1.0))  # no replay first: a new run
    assert _stored(store, trial) == [(1, 1.0)]  # the dead run's epochs went with the first new one
    assert reporter(_record(2, 0.9)) and reporter(_record(3, 0.8)) and reporter(_record(4, 0.7))
    assert _stored(store, trial) == [(1, 1.0), (2, 0.9), (3, 0.8), (4, 0.7)]
    assert store.get_trial(study, 0).last_epoch == 4


def test_a_restart_whose_first_write_failed_is_replaced_by_the_final_write(dead_run, monkeypatch):
    store, study, trial = dead_run
    reporter = _reporter(store, study, trial)
    real = store.report_epochs
    locked = RuntimeError("storage: no write lock")
    locked.__cause__ = sqlite3.OperationalError("database is locked")

    def busy(*args, **kwargs):  # a busy database: the epochs stay pending
        raise locked

    monkeypatch.setattr(store, "report_epochs", busy)
    assert reporter(_record(1, 1.0)) and reporter(_record(2, 0.9))
    assert reporter.rerun_from == 1 and [r["epoch"] for r in reporter.pending] == [1, 2]
    assert _stored(store, trial) == [(1, 3.0), (2, 3.0), (3, 3.0)]
    monkeypatch.setattr(store, "report_epochs", real)
    store.finish_trial(trial.id, state=COMPLETE, value=0.9, epochs=reporter.pending, rerun_from=reporter.rerun_from)
    assert _stored(store, trial) == [(1, 1.0), (2, 0.9)]


def test_the_new_runs_epochs_are_judged_again(dead_run):
    """The pruner judged the dead run's epoch 1 (3.0); the new run's epoch 1 is another value, judged anew."""
    store, study, trial = dead_run
    peer = store.start_trial(study, params={}, rank=1, island=None, device="cpu")
    store.finish_trial(peer.id, state=COMPLETE, value=0.5, epochs=[_record(1, 0.5)])
    reporter = _reporter(store, study, trial, ASHAPruner(min_epochs=1, reduction=2))
    assert not reporter(_record(1, 0.6)) and reporter.pruned_at == 1  # behind the peer at the rung: pruned
    assert _stored(store, trial) == [(1, 0.6)]
