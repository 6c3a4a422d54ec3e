"""The job's closing barrier sleeps while it waits: MPICH polls a blocking barrier at full speed, and a rank
done with its trials took a core from the rank still training (a sweep saw epochs 70x slower on 2 cores)."""

import subprocess
import sys

from oialr_search.search._workers import idle_barrier

from .test_search_cli import MPIEXEC

SCRIPT = """
import time
from mpi4py import MPI
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
