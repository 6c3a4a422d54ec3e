"""The epoch reporter of a resumed trial: the epochs its checkpoint restored are not stored twice, and a
run that restarted from scratch replaces the dead run's stored epochs instead of joining them."""

import sqlite3

import pytest

from oialr_search.search import ASHAPruner, NopPruner
from oialr_search.search._objectives import objectives_from
from oialr_search.search._reporter import EpochReporter
from oialr_search.storage import COMPLETE, Store

OBJECTIVES = objectives_from([{"metric": "val_loss", "direction": "minimize"}])


def _record(epoch, loss, seconds=1.0):
    return {"epoch": epoch, "step": epoch, "train_loss": loss, "val_loss": loss, "top1": 50.0, "top5": 90.0,
            "lr": 1e-3, "trainable_fraction": 0.5, "seconds": seconds, "compression": 0.5,
            "train_seconds": float(epoch)}


DEAD_RUN = [_record(1, 3.0), _record(2, 3.0), _record(3, float("nan"))]  # (a NaN is stored as NULL)


def _study_with_a_dead_run(tmp_path, run):
    """(store, study, trial): a RUNNING trial whose dead run stored the epochs ``run``."""
    store = Store(f"sqlite:///{tmp_path}/db.sqlite")
    study = store.create_study(name="s", space={"raw": {}}, space_path="", metric="val_loss", direction="minimize",
                               backend="optuna", seed=0, budget=4)
    trial = store.start_trial(study, params={}, rank=0, island=None, device="cpu")
    store.report_epochs(trial.id, run)
    return store, study, trial


@pytest.fixture()
def dead_run(tmp_path):
    """(store, study, trial): a RUNNING trial whose dead run stored DEAD_RUN."""
    store, study, trial = _study_with_a_dead_run(tmp_path, DEAD_RUN)
    yield store, study, trial
    store.engine.dispose()


def _reporter(store, study, trial, pruner=None, stored_epochs=3):
    return EpochReporter(store=store, study=study, trial_id=trial.id, objectives=OBJECTIVES,
                         pruner=pruner or NopPruner(), max_epochs=5, stored_epochs=stored_epochs, flush_seconds=0.0)


def _stored(store, trial):
    return [(e["epoch"], e["val_loss"]) for e in store.epochs(trial.id)]


def _writes(store, monkeypatch):
    """The report_epochs calls made from now on."""
    calls, real = [], store.report_epochs
    monkeypatch.setattr(store, "report_epochs", lambda *a, **k: calls.append((a, k)) or real(*a, **k))
    return calls


def test_the_epochs_a_checkpoint_restored_are_skipped_and_the_run_goes_on(dead_run, monkeypatch):
    store, study, trial = dead_run
    reporter, writes = _reporter(store, study, trial), _writes(store, monkeypatch)
    assert all(reporter(dict(r)) for r in DEAD_RUN)  # the replay: what the store holds, value for value
    assert writes == [] and reporter.rerun_from is None
    assert reporter(_record(4, 2.0)) and reporter(_record(5, 1.0))
    assert _stored(store, trial) == [(1, 3.0), (2, 3.0), (3, None), (4, 2.0), (5, 1.0)]


@pytest.mark.parametrize("first", [_record(1, 1.0), _record(1, 3.0, seconds=1.25)],
                         ids=["other values", "same values, other timings"])
def test_a_run_restarted_from_scratch_replaces_the_stored_epochs(dead_run, first):
    """A new run's first epoch (a restart from scratch, or the replay of a checkpoint of such a run) differs from
    the stored one: the stored epochs go with its write, and its epochs are stored instead."""
    store, study, trial = dead_run
    reporter = _reporter(store, study, trial)
    assert reporter(first)
    assert _stored(store, trial) == [(1, first["val_loss"])]  # the dead run's epochs went with the first new one
    assert reporter(_record(2, 0.9)) and reporter(_record(3, 0.8)) and reporter(_record(4, 0.7))
    assert _stored(store, trial) == [(1, first["val_loss"]), (2, 0.9), (3, 0.8), (4, 0.7)]
    assert store.get_trial(study, 0).last_epoch == 4


def test_a_restart_whose_writes_failed_is_replaced_by_the_final_write_or_by_the_next_jobs_replay(
        dead_run, monkeypatch):
    store, study, trial = dead_run
    reporter = _reporter(store, study, trial)
    real = store.report_epochs
    locked = RuntimeError("storage: no write lock")
    locked.__cause__ = sqlite3.OperationalError("database is locked")

    def busy(*args, **kwargs):  # a busy database: the epochs stay pending
        raise locked

    monkeypatch.setattr(store, "report_epochs", busy)
    new_run = [_record(1, 1.0), _record(2, 0.9)]
    assert reporter(new_run[0]) and reporter(new_run[1])
    assert reporter.rerun_from == 1 and [r["epoch"] for r in reporter.pending] == [1, 2]
    assert _stored(store, trial) == [(1, 3.0), (2, 3.0), (3, None)]
    monkeypatch.setattr(store, "report_epochs", real)
    # its final write is busy too, or its job is killed: the next job resumes its checkpoint, whose epochs (the new
    # run's) are not what the store holds
    nxt = _reporter(store, study, trial)
    assert nxt(new_run[0]) and nxt(new_run[1]) and nxt(_record(3, 0.8))
    assert _stored(store, trial) == [(1, 1.0), (2, 0.9), (3, 0.8)]
    # and the final write carries the rerun when no flush did
    store.report_epochs(trial.id, DEAD_RUN, rerun_from=1)
    store.finish_trial(trial.id, state=COMPLETE, value=0.9, epochs=new_run, rerun_from=1)
    assert _stored(store, trial) == [(1, 1.0), (2, 0.9)]


def test_the_new_runs_epochs_are_judged_again(dead_run):
    """The pruner judged the dead run's epoch 1 (3.0); the new run's epoch 1 is another value, judged anew."""
    store, study, trial = dead_run
    peer = store.start_trial(study, params={}, rank=1, island=None, device="cpu")
    store.finish_trial(peer.id, state=COMPLETE, value=0.5, epochs=[_record(1, 0.5)])
    reporter = _reporter(store, study, trial, ASHAPruner(min_epochs=1, reduction=2))
    assert not reporter(_record(1, 0.6)) and reporter.pruned_at == 1  # behind the peer at the rung: pruned
    assert _stored(store, trial) == [(1, 0.6)]


def test_a_run_restarted_from_scratch_that_dies_again_still_counts_as_a_crash(dead_run):
    """The crash guard gives a trial up after runs that died without a new epoch in between: epochs a restarted
    run stores again, up to where the trial had got, are no progress; an epoch past it is."""
    store, study, trial = dead_run
    job = Store(store.url, create=False)  # the next job
    claimed = job.claim_dead(study, grace=0.0, rank=0, device="cpu")  # the dead run's heartbeat is stale
    assert claimed is not None and claimed.crashes == 1
    reporter = _reporter(job, study, trial)
    assert reporter(_record(1, 1.0)) and reporter(_record(2, 1.0)) and reporter(_record(3, 1.0))
    assert store.get_trial(study, 0).crashes == 1
    assert reporter(_record(4, 1.0))
    assert store.get_trial(study, 0).crashes == 0
    job.engine.dispose()


def test_stored_epochs_that_cannot_be_read_are_kept_for_the_whole_run(dead_run, monkeypatch, capsys):
    """A read that failed and then worked would tell a new run only from there on (its epoch 1 kept as the dead
    run's, its epoch 2 on stored after it): if the stored epochs cannot be read, the run keeps them all."""
    store, study, trial = dead_run
    real, calls = store.epochs, []
    locked = RuntimeError("storage: busy")
    locked.__cause__ = sqlite3.OperationalError("database is locked")

    def once(trial_id):
        calls.append(trial_id)
        if len(calls) == 1:
            raise locked
        return real(trial_id)

    monkeypatch.setattr(store, "epochs", once)
    reporter = _reporter(store, study, trial)
    assert reporter(_record(1, 1.0)) and reporter(_record(2, 0.9)) and reporter(_record(3, 0.8))
    assert reporter(_record(4, 0.7)) and reporter.rerun_from is None and len(calls) == 1
    monkeypatch.setattr(store, "epochs", real)
    assert _stored(store, trial) == [(1, 3.0), (2, 3.0), (3, None), (4, 0.7)]
    assert capsys.readouterr().err.count("reading its stored epochs failed") == 1


def test_a_replay_matches_what_a_database_gives_back_to_15_digits(dead_run, monkeypatch):
    """PostgreSQL before version 12 (or with extra_float_digits = 0) sends floats with 15 significant digits: a
    replay must still match them, or every resume would rewrite the trial's epochs and judge them again."""
    store, study, trial = dead_run
    rounded = [{k: float(f"{v:.15g}") if isinstance(v, float) else v for k, v in row.items()}
               for row in store.epochs(trial.id)]
    monkeypatch.setattr(store, "epochs", lambda trial_id: rounded)
    precise = [{**r, "lr": 1e-3 + 1e-19, "train_loss": r["train_loss"] * (1 + 3e-16)} for r in DEAD_RUN]
    reporter = _reporter(store, study, trial)
    assert all(reporter(r) for r in precise) and reporter.rerun_from is None
    other = _reporter(store, study, trial)  # while a new run's timing differs by far more
    assert other(_record(1, 3.0, seconds=1.0 + 1e-9)) and other.stored_epochs == 0  # (its rerun, stored)


def test_the_last_stored_epoch_is_judged_again_where_it_is_a_decision_epoch(tmp_path):
    """A decision to stop is not stored: a job that died between pruning the trial at epoch 3 and storing it
    PRUNED lost it, and the next job's replay would train it on. So the replay of the last stored epoch is
    judged again where it is a rung; earlier epochs are not (a peer better at epoch 1 prunes nothing now)."""
    run = [_record(1, 3.0), _record(2, 2.0), _record(3, 1.0)]
    store, study, trial = _study_with_a_dead_run(tmp_path, run)
    peer = store.start_trial(study, params={}, rank=1, island=None, device="cpu")
    store.finish_trial(peer.id, state=COMPLETE, value=0.5, epochs=[_record(e, 0.5) for e in (1, 2, 3)])
    asha = ASHAPruner(min_epochs=1, reduction=3)  # rungs at epochs 1 and 3
    reporter = _reporter(store, study, trial, asha)
    assert reporter(dict(run[0])) and reporter(dict(run[1]))  # replays, judged before: on
    assert not reporter(dict(run[2])) and reporter.pruned_at == 3  # the last stored rung: judged again
    assert _stored(store, trial) == [(1, 3.0), (2, 2.0), (3, 1.0)]  # and nothing written
    two = _reporter(store, study, trial, asha, stored_epochs=2)  # its last stored epoch is no rung
    assert two(dict(run[0])) and two(dict(run[1]))
    store.engine.dispose()
