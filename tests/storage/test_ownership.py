"""Heartbeats and ownership: a trial of a dead job is claimed by exactly one other, and the run that
lost it can no longer write to it (keep it alive, free it, report epochs or store an outcome)."""

import time
import uuid
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import select, update

from oialr_search.search._heartbeat import GRACE_INTERVALS, Heartbeat
from oialr_search.storage import COMPLETE, RUNNING, Store, TrialTakenOver, holder_grace, is_dead
from oialr_search.storage._clock import DatabaseClock, host_now
from oialr_search.storage._schema import TrialRow

EPOCH = {"epoch": 1, "step": 3, "train_loss": 1.0, "val_loss": 0.5, "top1": 50.0, "top5": 90.0, "lr": 1e-3,
         "trainable_fraction": 0.3, "seconds": 1.0}


def test_a_claimed_trial_belongs_to_its_claimer_alone(store_url):
    a, b, c = Store(store_url), Store(store_url), Store(store_url)  # three jobs
    try:
        study = a.create_study(name="s", space={"raw": {}}, space_path="", metric="val_loss", direction="minimize",
                               backend="optuna", seed=0, budget=5)
        trial = a.start_trial(study, params={"x": 1}, rank=0, island=None, device="cpu", config={"c": 1})
        assert a.beat(trial.id, grace=None) and b.claim_dead(study, grace=60, rank=1, device="cpu") is None  # alive
        time.sleep(1.0)  # A's beat is older than the grace below, B's claim will be far younger (even under load)
        taken = b.claim_dead(study, grace=0.5, rank=1, device="cuda:1")  # A looks dead to B: B takes it
        assert taken.number == trial.number and taken.params == {"x": 1} and taken.config == {"c": 1}
        assert c.claim_dead(study, grace=0.5, rank=2, device="cpu") is None  # B's claim made it alive
        assert not a.beat(trial.id, grace=None)  # A learns it lost the trial ...
        with pytest.raises(TrialTakenOver):
            a.report_epochs(trial.id, [EPOCH])  # ... and cannot write to it
        with pytest.raises(TrialTakenOver):
            a.finish_trial(trial.id, state=COMPLETE, value=0.1, epochs=[EPOCH])
        a.release(trial.id)  # a no-op: B's heartbeat stays
        assert c.claim_dead(study, grace=60, rank=2, device="cpu") is None
        stored = b.get_trial(study, trial.number)
        assert stored.state == RUNNING and stored.last_epoch is None and b.epochs(trial.id) == []
        b.finish_trial(trial.id, state=COMPLETE, value=0.2, epochs=[EPOCH])
        done = b.get_trial(study, trial.number)
        assert done.state == COMPLETE and done.value == 0.2 and done.rank == 1 and done.device == "cuda:1"
    finally:
        for store in (a, b, c):
            store.engine.dispose()


def test_a_released_trial_is_dead_at_once(store_url):
    a, b = Store(store_url), Store(store_url)
    try:
        study = a.create_study(name="s", space={"raw": {}}, space_path="", metric="val_loss", direction="minimize",
                               backend="optuna", seed=0, budget=5)
        trial = a.start_trial(study, params={}, rank=0, island=None, device="cpu")
        assert a.dead_trials(study, grace=60) == 0
        a.release(trial.id)  # preempted: checkpointed, resumable now
        assert a.dead_trials(study, grace=60) == 1
        assert b.claim_dead(study, grace=60, rank=0, device="cpu").number == trial.number
        assert not a.beat(trial.id, grace=None)
    finally:
        a.engine.dispose()
        b.engine.dispose()


def test_claims_count_the_runs_that_died_holding_the_trial(store_url):
    """A stale heartbeat means the run died (out of memory, a crash): counted. A released trial (its run
    checkpointed and let go on preemption) was not a death: not counted."""
    a, b = Store(store_url), Store(store_url)
    try:
        study = a.create_study(name="s", space={"raw": {}}, space_path="", metric="val_loss", direction="minimize",
                               backend="optuna", seed=0, budget=5)
        trial = a.start_trial(study, params={}, rank=0, island=None, device="cpu")
        assert trial.crashes == 0
        time.sleep(0.05)
        assert b.claim_dead(study, grace=0.01, rank=0, device="cpu").crashes == 1  # a died beating
        time.sleep(0.05)
        assert a.claim_dead(study, grace=0.01, rank=0, device="cpu").crashes == 2  # so did b
        a.release(trial.id)
        assert b.claim_dead(study, grace=60, rank=0, device="cpu").crashes == 2  # released: no death
        assert b.get_trial(study, trial.number).crashes == 2
        b.report_epochs(trial.id, [EPOCH])  # progress: the deaths so far were not the trial's doing
        assert b.get_trial(study, trial.number).crashes == 0
        time.sleep(0.05)
        # b's claim set the trial's deadline a minute ahead (b's grace period): a's shorter one does not count
        assert a.claim_dead(study, grace=0.01, rank=0, device="cpu") is None
        assert b.beat(trial.id, grace=0.01)  # b's last beat, as a job with a short grace period
        time.sleep(0.05)
        assert a.claim_dead(study, grace=0.01, rank=0, device="cpu").crashes == 1
    finally:
        a.engine.dispose()
        b.engine.dispose()


def test_a_trial_is_dead_by_the_deadline_of_the_job_holding_it_not_by_the_looking_jobs_grace(store_url):
    """v7: each start, beat and claim sets the trial's deadline from the holding job's grace period; a job with a
    shorter one (another OIALR_SEARCH_HEARTBEAT) took live trials over, one with a longer one waited too long."""
    a, b = Store(store_url), Store(store_url)
    try:
        study = a.create_study(name="s", space={"raw": {}}, space_path="", metric="val_loss", direction="minimize",
                               backend="optuna", seed=0, budget=5)
        slow = a.start_trial(study, params={"x": 1}, rank=0, island=None, device="cpu", grace=3600)
        quick = a.start_trial(study, params={"x": 2}, rank=0, island=None, device="cpu", grace=0.05)
        time.sleep(0.1)
        for grace in (0.01, 3600):  # whatever the looking job's grace: the quick trial is dead, the slow one alive
            assert b.dead_trials(study, grace=grace) == 1
            now = b.now()
            assert {number: is_dead(beat, deadline, now=now, grace=grace)
                    for number, beat, deadline in b.heartbeats(study).values()} == {0: False, 1: True}
        taken = b.claim_dead(study, grace=2, rank=1, device="cpu")
        assert taken is not None and taken.number == quick.number
        assert b.claim_dead(study, grace=0.01, rank=1, device="cpu") is None  # the slow one, and b's claim: alive
        assert a.beat(slow.id, grace=0.05)  # its holder's next deadline is 50 ms ahead
        time.sleep(2.1)
        first = b.claim_dead(study, grace=3600, rank=1, device="cpu")
        second = a.claim_dead(study, grace=3600, rank=0, device="cpu")
        assert (first.number, second.number) == (slow.number, quick.number)
        a.release(quick.id)  # released: dead at once, also to a job with a long grace period
        assert b.dead_trials(study, grace=3600) == 1
    finally:
        a.engine.dispose()
        b.engine.dispose()


def test_the_deadline_does_not_count_under_a_job_of_an_earlier_release(store_url):
    """A job of an earlier release, still running after the upgrade (one refuses only while trials are RUNNING),
    claims, beats and releases with its own token and leaves the deadline as it was: the previous holder's,
    passing while that job holds the trial, made its live trial look dead. Its trials are judged by their
    heartbeat and the looking job's grace period, as before v7 (two reviews)."""
    a, b = Store(store_url), Store(store_url)
    try:
        study = a.create_study(name="s", space={"raw": {}}, space_path="", metric="val_loss", direction="minimize",
                               backend="optuna", seed=0, budget=5)
        trial = a.start_trial(study, params={}, rank=0, island=None, device="cpu", grace=0.3)
        old = update(TrialRow).where(TrialRow.id == trial.id)
        with a.engine.begin() as conn:  # the earlier release's claim (before a's deadline) and its beats
            conn.execute(old.values(heartbeat=a.now(), owner=uuid.uuid4().hex))
        time.sleep(0.4)  # a's deadline has passed, the old job's last beat is 0.4 s old
        assert b.dead_trials(study, grace=3600) == 0 and b.claim_dead(study, grace=3600, rank=1, device="cpu") is None
        (_, beat, deadline), = b.heartbeats(study).values()
        assert deadline is None and holder_grace(beat, deadline) is None  # the stored one does not count
        assert not is_dead(beat, deadline, now=b.now(), grace=3600) and is_dead(beat, deadline, now=b.now(), grace=0.1)
        assert b.claim_dead(study, grace=0.1, rank=1, device="cpu").number == trial.number  # its beat is stale
        b.release(trial.id)
        with a.engine.begin() as conn:  # the earlier release's claim again, then its release: no heartbeat
            conn.execute(old.values(heartbeat=None, owner=uuid.uuid4().hex, deadline=a.now() + timedelta(hours=1)))
        assert b.dead_trials(study, grace=3600) == 1
    finally:
        a.engine.dispose()
        b.engine.dispose()


def test_each_beat_of_a_job_moves_the_deadline_to_its_grace_period_ahead(store_url):
    store = Store(store_url)
    try:
        study = store.create_study(name="s", space={"raw": {}}, space_path="", metric="val_loss", direction="minimize",
                                   backend="optuna", seed=0, budget=5)
        trial = store.start_trial(study, params={}, rank=0, island=None, device="cpu", grace=7.0)
        (_, started, first), = store.heartbeats(study).values()
        assert holder_grace(started, first) == 7.0
        heartbeat = Heartbeat(store, interval=0.05)
        heartbeat.start(trial.id)
        time.sleep(1.0)
        heartbeat.stop()
        heartbeat.close()
        (_, beat, deadline), = store.heartbeats(study).values()
        assert beat > started and holder_grace(beat, deadline) == pytest.approx(GRACE_INTERVALS * 0.05)
        assert store.beat(trial.id, grace=None)  # no deadline: the looking jobs' grace periods decide
        (_, beat, deadline), = store.heartbeats(study).values()
        assert deadline is None and holder_grace(beat, deadline) is None
        store.finish_trial(trial.id, state=COMPLETE, epochs=[])
        with store.engine.connect() as conn:
            assert conn.scalar(select(TrialRow.deadline).where(TrialRow.id == trial.id)) is None
    finally:
        store.engine.dispose()


def _clock_off_by(store: Store, offset: timedelta) -> None:
    """Make ``store``'s host clock ``offset`` off (a node without NTP, or one whose clock just jumped)."""
    store._clock._host = lambda: host_now() + offset


def test_a_node_whose_clock_is_off_neither_looks_dead_nor_takes_live_trials(postgres_schema_url):
    """On PostgreSQL every store keeps the server's time: a job whose node's clock is ten minutes behind
    does not look dead to the others (its heartbeats were stale by their clocks), and one ten minutes
    ahead, or whose clock jumped ahead after it read the server's, does not take their live trials over."""
    behind, ahead, on_time = Store(postgres_schema_url), Store(postgres_schema_url), Store(postgres_schema_url)
    try:
        _clock_off_by(behind, -timedelta(minutes=10))
        _clock_off_by(ahead, timedelta(minutes=10))
        study = on_time.create_study(name="s", space={"raw": {}}, space_path="", metric="val_loss",
                                     direction="minimize", backend="optuna", seed=0, budget=5)
        late = behind.start_trial(study, params={"x": 1}, rank=0, island=None, device="cpu")
        assert behind.beat(late.id, grace=None)
        live = on_time.start_trial(study, params={"x": 2}, rank=0, island=None, device="cpu")
        _clock_off_by(on_time, timedelta(minutes=10))  # a step after its first reading of the server's clock
        for store in (on_time, ahead):
            assert store.dead_trials(study, grace=60) == 0
            assert store.claim_dead(study, grace=60, rank=1, device="cpu") is None
        assert behind.beat(late.id, grace=None) and on_time.beat(live.id, grace=None)  # both still hold their trials
        assert abs((behind.now() - ahead.now()).total_seconds()) < 5  # one clock
        behind.finish_trial(late.id, state=COMPLETE, value=0.1)
        stored = on_time.get_trial(study, late.number)
        assert 0 <= stored.duration < 60 and abs((stored.finished - on_time.now()).total_seconds()) < 60
    finally:
        for store in (behind, ahead, on_time):
            store.engine.dispose()


def test_the_database_clock_follows_the_server_on_the_monotonic_clock_and_reads_it_again():
    server = [datetime(2030, 1, 1, 12, 0, tzinfo=timezone(timedelta(hours=2)))]  # 10:00 UTC
    mono = [100.0]
    reads = []

    def read_server():
        reads.append(1)
        return server[0]

    def host():
        raise AssertionError("a server database's time never comes from the host's clock")

    clock = DatabaseClock(read_server, refresh=3600, host=host, monotonic=lambda: mono[0])
    assert clock.now() == datetime(2030, 1, 1, 10, 0) and len(reads) == 1  # an aware time, in naive UTC
    mono[0] += 30
    assert clock.now() == datetime(2030, 1, 1, 10, 0, 30) and len(reads) == 1  # followed, not read again
    mono[0] += 3600
    server[0] += timedelta(hours=2)  # the server's clock was set forward meanwhile
    assert clock.now() == datetime(2030, 1, 1, 12, 0) and len(reads) == 2  # read again after `refresh`
    assert DatabaseClock(None, host=lambda: datetime(2030, 1, 1)).now() == datetime(2030, 1, 1)  # SQLite


def test_a_server_clock_that_cannot_be_read_is_a_storage_error_naming_it(postgres_schema_url, monkeypatch):
    store = Store(postgres_schema_url)
    try:
        study = store.create_study(name="s", space={"raw": {}}, space_path="", metric="val_loss",
                                   direction="minimize", backend="optuna", seed=0, budget=5)
        store._clock = DatabaseClock(store._server_time, refresh=0)
        monkeypatch.setattr(store.engine.dialect, "do_execute", _fail)
        with pytest.raises(RuntimeError, match="reading the database server's clock failed"):
            store.start_trial(study, params={}, rank=0, island=None, device="cpu")
    finally:
        store.engine.dispose()


def _fail(*args, **kwargs):
    from sqlalchemy.exc import OperationalError

    raise OperationalError("SELECT now()", {}, Exception("server closed the connection"))
