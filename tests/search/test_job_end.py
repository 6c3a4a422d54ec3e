"""The end of a job: the closing barrier sleeps while it waits (MPICH polls a blocking barrier at full speed,
and a rank done with its trials took a core from the rank still training: a sweep saw epochs 70x slower on 2
cores), yet lets ranks that arrive together go at once; the drain sees the job's last trials end at once."""

import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from datetime import datetime, timedelta

import pytest

from oialr_search.search._execution import Trials
from oialr_search.search._workers import idle_barrier

from .test_search_cli import MPIEXEC

SCRIPT = """
import time
from mpi4py import MPI
from oialr_search.search._execution import Trials
from oialr_search.search._workers import idle_barrier

comm = MPI.COMM_WORLD
if comm.Get_rank() == 0:
    time.sleep(2.0)  # the rank still training
start = time.process_time()
idle_barrier(comm)
print(f"rank {comm.Get_rank()} cpu {time.process_time() - start:.3f}", flush=True)
"""


def test_a_rank_waiting_at_the_closing_barrier_leaves_the_cores_to_the_others(tmp_path):
    (tmp_path / "wait.py").write_text(SCRIPT)
    proc = subprocess.run([str(MPIEXEC), "-n", "2", sys.executable, "wait.py"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    # by pattern, not by line: mpiexec may forward the two ranks' lines without a newline between them
    cpu = {int(rank): float(seconds) for rank, seconds in re.findall(r"rank (\d+) cpu (\d+\.\d+)", proc.stdout)}
    assert cpu[1] < 0.5, proc.stdout  # a blocking Barrier spends the 2 s of waiting on the CPU


class _Request:
    def __init__(self, tests: int) -> None:
        self.tests = tests

    def Test(self) -> bool:  # noqa: N802 - mpi4py's name
        self.tests -= 1
        return self.tests < 0


class _Comm:
    def __init__(self, tests: int) -> None:
        self.request = _Request(tests)

    def Ibarrier(self) -> _Request:  # noqa: N802
        return self.request


def test_the_closing_barrier_polls_often_at_first_then_backs_off_to_the_poll_interval(monkeypatch):
    # the barrier advances one round per test, so polling every 50 ms from the start kept ranks that
    # arrived together 0.2 s in it (8 ranks); a long wait still sleeps at the poll interval
    slept = []
    monkeypatch.setattr("oialr_search.search._workers.time.sleep", slept.append)
    idle_barrier(_Comm(60), poll=0.05)
    assert len(slept) == 60
    assert slept[0] <= 0.0005 and sum(slept[:10]) < 0.01  # the first ten tests within 10 ms
    assert slept == sorted(slept) and slept[-1] == 0.05


class _Store:
    """Another rank's trial 7 runs for ``looks`` more reads of the heartbeats, then ends."""

    def __init__(self, looks: int) -> None:
        self.looks = looks

    beat = datetime(2026, 1, 1)

    def heartbeats(self, study):  # noqa: ANN001, ANN201
        self.looks -= 1
        return {7: (3, self.beat, None)} if self.looks >= 0 else {}  # the same beat: silent, not yet dead

    def now(self) -> datetime:
        return self.beat + timedelta(seconds=1)


def test_the_drain_looks_often_at_first_then_backs_off_to_half_a_heartbeat_interval(monkeypatch):
    # the trials a drain watches are mostly the last ones of its job's other ranks: a look every 0.5 s from
    # the start kept the Optuna backend's ranks up to 0.5 s past the job's last trial
    monkeypatch.setenv("OIALR_SEARCH_HEARTBEAT", "30")
    slept, sent = [], []
    monkeypatch.setattr("oialr_search.search._execution.time.sleep", slept.append)
    trials = object.__new__(Trials)  # only what drain() uses
    trials.lost, trials.stop, trials.store, trials.study = False, lambda: False, _Store(40), None
    trials.resume_dead = lambda now=False: None
    trials.workers = type("W", (), {"send_task": staticmethod(sent.append)})()
    trials.drain()
    assert len(slept) == 40 and sent == ["done"]
    assert slept[0] <= 0.01 and sum(slept[:3]) < 0.05  # the first three looks within 50 ms
    assert slept == sorted(slept) and slept[-1] == 0.5  # then every half interval, at most 0.5 s


def _drain(store, *, rank=0):
    """The end-of-job drain of a rank with nothing to resume, over ``store``'s heartbeats."""
    trials = object.__new__(Trials)  # only what drain() uses
    trials.lost, trials.stop, trials.store, trials.study, trials.rank = False, lambda: False, store, None, rank
    trials.resume_dead = lambda now=False: None
    trials.workers = type("W", (), {"send_task": staticmethod(lambda task: None)})()
    trials.drain()


def test_the_drain_says_when_a_silent_trial_will_be_resumed_by_its_holders_grace_period(monkeypatch, capsys):
    # the job holding the trial beats every 100 s (its deadline is 600 s after its beat): this job's own
    # grace period (6 s) says nothing about when the trial counts as dead
    monkeypatch.setenv("OIALR_SEARCH_HEARTBEAT", "1")
    monkeypatch.setattr("oialr_search.search._execution.time.sleep", lambda s: None)
    store, looks = _Store(3), iter(range(3))
    store.heartbeats = lambda study: \
        {7: (3, store.beat, store.beat + timedelta(seconds=600))} if next(looks, None) is not None else {}
    store.now = lambda: store.beat + timedelta(seconds=200)  # silent for two of its intervals
    _drain(store, rank=0)
    assert capsys.readouterr().out == ("[rank 0] trial 3 stopped beating 200s ago (its job was stopped?): resuming it "
                                       "once 600s have passed without a beat\n")


def test_the_drain_says_what_it_waits_for_when_a_live_trial_of_another_job_is_slow_to_beat(monkeypatch, capsys):
    # the job holding trial 5 beats every 600 s and beat 10 s ago: alive, so the drain waits for its next beat (or
    # its deadline), which may take minutes, and says so, once; trial 6 beat half a second ago, as this job's
    # other ranks' trials do (every second here): not named
    monkeypatch.setenv("OIALR_SEARCH_HEARTBEAT", "1")
    monkeypatch.setattr("oialr_search.search._execution.time.sleep", lambda s: None)
    store, looks = _Store(3), iter(range(6))
    far = store.beat + timedelta(seconds=3600)
    store.heartbeats = lambda study: {9: (5, store.beat, far), 11: (6, store.beat + timedelta(seconds=9.5), far)} \
        if next(looks, None) is not None else {}
    store.now = lambda: store.beat + timedelta(seconds=10)
    _drain(store, rank=1)
    assert capsys.readouterr().out == ("[rank 1] waiting for trial(s) 5 of other jobs: each is left to its job once it "
                                       "beats again, or resumed here once its heartbeat is overdue\n")


JOB = """
import os, signal, sys, time
from mpi4py import MPI
from oialr_search.search import SearchRequest, load_space, run_search
from oialr_search.search._objective import TrialOutcome
from oialr_search.search._preemption import early_signals_held

rank = MPI.COMM_WORLD.Get_rank()


def objective(space, params, *, should_stop, resume=False, **_):
    if os.environ.get("DIE"):  # a job killed while training its trial
        os._exit(9)
    if resume and os.environ.get("PREEMPT_RESUMED"):  # preempted while it resumes that trial
        os.kill(os.getpid(), signal.SIGTERM)
        while not should_stop():
            time.sleep(0.02)
        return TrialOutcome("RUNNING", preempted=True)
    start = time.monotonic()
    while os.environ.get("SLOW_RANK") == str(rank) and time.monotonic() - start < 60:  # trains until preempted
        if should_stop():
            return TrialOutcome("RUNNING", preempted=True)
        time.sleep(0.02)
    if os.environ.get("SLOW_RANK") and rank == 0:
        time.sleep(2)  # until rank 1 took the other trial
    return TrialOutcome("COMPLETE", metrics={"val_loss": 1.0})


if os.environ.get("ONE_WORKER_PROPULATE"):  # Propulate with one worker of K ranks (the job runs Optuna there)
    import dataclasses
    from oialr_search.search import _runner

    prepare = _runner._prepare
    _runner._prepare = lambda req, size: dataclasses.replace(prepare(req, size), backend="propulate")
cpu = time.process_time()
with early_signals_held():  # as the CLI's run and resume
    code = run_search(SearchRequest(study="s", storage="sqlite:///s.db", space=load_space("space.yaml"),
                                    backend="optuna", budget=int(os.environ["BUDGET"]),
                                    ranks_per_trial=int(os.environ.get("K", "1"))), objective=objective)
with open(f"cpu.{rank}", "w") as seconds:  # (a file: mpiexec may join the ranks' output lines)
    seconds.write(f"{time.process_time() - cpu:.3f}")
print(f"rank {rank} exit {code}", flush=True)
sys.exit(code)
"""
SPACE = """\
base: {model: {name: mlp}, data: {name: digits}}
objective: {metric: val_loss}
params:
  optim.lr: {type: float, low: 1.0e-3, high: 1.0e-2, log: true}
"""


def _job(tmp_path, ranks, **env):
    (tmp_path / "job.py").write_text(JOB)
    (tmp_path / "space.yaml").write_text(SPACE)
    return subprocess.Popen([str(MPIEXEC), "-n", str(ranks), sys.executable, "-m", "mpi4py", "job.py"], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            env={**os.environ, "OIALR_SEARCH_HEARTBEAT": "1", "OMP_NUM_THREADS": "1", **env})


def test_a_preemption_while_a_rank_waits_at_the_closing_barrier_stops_the_job_in_order(tmp_path):
    """Rank 0 is done and waits at the closing barrier while rank 1 trains: SIGTERM to the job (as SLURM sends
    it to every task) must checkpoint rank 1's trial and end the job with 0. Rank 0 had restored the default
    handler before the barrier: it died, and mpiexec killed rank 1 before it released its trial (a review)."""
    proc = _job(tmp_path, 2, BUDGET="2", SLOW_RANK="1")
    for line in proc.stdout:  # rank 0's trial is stored, rank 1's trains (at most 60 s)
        if "1/2 finished" in line:
            break
    else:
        pytest.fail(f"no trial finished: {proc.communicate()[1][-3000:]}")
    time.sleep(4)  # rank 0's drain sees rank 1's trial beat again, then it waits at the barrier
    os.killpg(proc.pid, signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-3000:]
    assert "rank 0 exit 0" in out and "rank 1 exit 0" in out, out
    with sqlite3.connect(tmp_path / "s.db") as db:
        rows = db.execute("SELECT state, heartbeat FROM oialr_trials ORDER BY number").fetchall()
    assert [state for state, _ in sorted(rows)] == ["COMPLETE", "RUNNING"], rows
    assert sorted(rows)[1][1] is None, rows  # rank 1's trial released: the next job resumes it at once


def test_followers_sleep_while_their_leader_drains(tmp_path):
    """With --ranks-per-trial 2 the follower waited for its leader's next message in a blocking bcast, spinning
    a core for the whole end-of-job drain, which here waits out a killed job's trial (a review)."""
    killed = _job(tmp_path, 1, BUDGET="1", DIE="1")
    assert killed.wait(timeout=120) == 9, killed.communicate()[1][-2000:]
    proc = _job(tmp_path, 2, BUDGET="1", K="2")  # the drain waits 6 heartbeat intervals, then resumes the trial
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-3000:]
    assert "resuming trial 0 of an earlier job" in out, out
    cpu = [float((tmp_path / f"cpu.{rank}").read_text()) for rank in (0, 1)]
    assert cpu[1] < cpu[0] + 1, (cpu, out)  # as its leader (start-up alike); spinning, seconds of the drain more


def test_a_group_preempted_while_it_resumes_a_dead_trial_under_propulate_ends_in_order(tmp_path):
    """Propulate's followers follow once per generation: a resumed dead trial that was preempted, then a new
    trial for the same generation, sent them two task messages, and the leader waited for them forever at the
    second (a review)."""
    killed = _job(tmp_path, 1, BUDGET="2", DIE="1")
    assert killed.wait(timeout=120) == 9, killed.communicate()[1][-2000:]
    time.sleep(6.5)  # the killed job's trial is dead (6 heartbeat intervals)
    proc = _job(tmp_path, 2, BUDGET="2", K="2", ONE_WORKER_PROPULATE="1", PREEMPT_RESUMED="1")
    try:
        out, err = proc.communicate(timeout=90)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail(f"the job hung: {proc.communicate()[1][-3000:]}")
    assert proc.returncode == 0, err[-3000:]
    assert "resuming trial 0 of an earlier job" in out and "checkpointed at step boundary" in err, (out, err)


def test_a_rank_alone_still_runs_the_proposal_after_a_resumed_trial_that_was_not_stored():
    """Only a group's followers need one task message per turn: a rank training alone runs the generation's
    proposal after a resumed dead trial that was taken over, as before (second review)."""
    from oialr_search.search._workers import Workers

    trials = object.__new__(Trials)  # only what turn() uses
    trials.workers = Workers(1, 0, 1)
    ran = []

    def resume_dead():
        trials.workers.send_task({"params": {}})  # it ran, and was taken over: nothing stored
        return None

    trials.resume_dead = resume_dead
    trials.new = lambda params, island, limit: ran.append(params) or "stored"
    assert trials.turn({"x": 1}, None) == "stored" and ran == [{"x": 1}]
