"""The end of a job: the closing barrier sleeps while it waits (MPICH polls a blocking barrier at full speed,
and a rank done with its trials took a core from the rank still training: a sweep saw epochs 70x slower on 2
cores), yet lets ranks that arrive together go at once; the drain sees the job's last trials end at once."""

import subprocess
import sys

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
    cpu = {int(line.split()[1]): float(line.split()[3]) for line in proc.stdout.splitlines() if line.startswith("rank")}
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

    def heartbeats(self, study):  # noqa: ANN001, ANN201
        self.looks -= 1
        return {7: (3, None)} if self.looks >= 0 else {}


def test_the_drain_looks_often_at_first_then_backs_off_to_half_a_heartbeat_interval(monkeypatch):
    # the trials a drain watches are mostly the last ones of its job's other ranks: a look every 0.5 s from
    # the start kept the Optuna backend's ranks up to 0.5 s past the job's last trial
    monkeypatch.setenv("OIALR_SEARCH_HEARTBEAT", "30")
    slept, sent = [], []
    monkeypatch.setattr("oialr_search.search._execution.time.sleep", slept.append)
    trials = object.__new__(Trials)  # only what drain() uses
    trials.lost, trials.stop, trials.store, trials.study = False, lambda: False, _Store(40), None
    trials.resume_dead = lambda now=False: None
    trials.workers = type("W", (), {"send": staticmethod(sent.append)})()
    trials.drain()
    assert len(slept) == 40 and sent == ["done"]
    assert slept[0] <= 0.01 and sum(slept[:3]) < 0.05  # the first three looks within 50 ms
    assert slept == sorted(slept) and slept[-1] == 0.5  # then every half interval, at most 0.5 s
