"""Threads per rank: the launcher's and the scheduler's choices win over an even split of the node."""

import json
import os
import subprocess
import sys

import pytest
import torch

from oialr_search.search import place, threads_for

from .test_search_cli import MPIEXEC


@pytest.mark.parametrize(
    ("mask", "sharing", "env", "expected"),
    [
        (16, 1, {}, 16),  # srun task binding: 4 ranks, each bound to its own 16 of 64 cores
        (64, 4, {}, 16),  # unbound: 4 ranks all see the whole 64-core node
        (16, 4, {}, 4),  # mpirun -n 4 in a 16-core cgroup cpuset (one mask for the whole job)
        (3, 4, {}, 1),  # never 0
        (64, 4, {"SLURM_CPUS_PER_TASK": "8"}, 8),
        (16, 1, {"SLURM_CPUS_PER_TASK": "32"}, 16),  # not more than the rank's mask
        (16, 4, {"SLURM_CPUS_PER_TASK": "16"}, 4),  # mpirun -n 4 inside a one-task sbatch -c 16
        (64, 4, {"OMP_NUM_THREADS": "3", "SLURM_CPUS_PER_TASK": "8"}, 3),
        (2, 2, {"OMP_NUM_THREADS": "1"}, 1),  # what the test and benchmark launchers set
        (64, 4, {"OMP_NUM_THREADS": "4,2"}, 4),  # OpenMP's nested list: the outer level
        (64, 4, {"OMP_NUM_THREADS": "auto", "SLURM_CPUS_PER_TASK": "8"}, 8),  # a bad value is ignored
        (64, 4, {"OMP_NUM_THREADS": "0"}, 16),
        (64, 4, {"OMP_NUM_THREADS": "", "SLURM_CPUS_PER_TASK": "-2"}, 16),
    ],
)
def test_threads_for(mask, sharing, env, expected):
    assert threads_for(mask, sharing, env) == expected


def test_place_honours_omp_num_threads(monkeypatch):
    previous = torch.get_num_threads()
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    try:
        p = place()
        assert (p.threads, p.local_rank, p.local_size, torch.get_num_threads()) == (3, 0, 1, 3)
    finally:
        torch.set_num_threads(previous)


WORKER = """
import json
from mpi4py import MPI
from oialr_search.search import place
p = place(MPI.COMM_WORLD)
rows = MPI.COMM_WORLD.gather([p.threads, p.local_rank, p.local_size], root=0)
if MPI.COMM_WORLD.Get_rank() == 0:
    print("ROWS " + json.dumps(rows))
"""


def test_unbound_ranks_split_the_cores_under_mpi():
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "SLURM_CPUS_PER_TASK")}
    proc = subprocess.run([str(MPIEXEC), "-n", "2", sys.executable, "-m", "mpi4py", "-c", WORKER],
                          capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = json.loads(next(x for x in proc.stdout.splitlines() if x.startswith("ROWS "))[5:])
    share = max(1, len(os.sched_getaffinity(0)) // 2)  # the launcher binds nothing: both ranks share the mask
    assert rows == [[share, 0, 2], [share, 1, 2]]
