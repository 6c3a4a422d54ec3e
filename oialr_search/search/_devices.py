"""Device placement: each rank takes cuda:{node-local rank % GPUs}, or the CPU, and its share of the cores."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Placement:
    device: str
    threads: int
    local_rank: int
    local_size: int


def _positive_int(value: str | None) -> int | None:
    """``value`` as a positive integer, else None. A list such as OpenMP's nested ``"4,2"`` gives its first entry."""
    if value is None:
        return None
    first = value.split(",")[0].strip()
    try:
        number = int(first)
    except ValueError:
        return None
    return number if number > 0 else None


def threads_for(mask_size: int, sharing: int, env: Mapping[str, str]) -> int:
    """The torch threads of one rank; the first rule that applies wins, and the result is at least 1.

    ``mask_size`` is the number of cores in the rank's CPU affinity mask; ``sharing`` the number of
    ranks on its node with the *same* mask (itself included), so 1 for a rank bound to its own cores.

    1. ``OMP_NUM_THREADS``: as it is (the user asked for it; the launchers of the tests and
       benchmarks set 1 for MPI children).
    2. ``SLURM_CPUS_PER_TASK``: as it is, but at most the rank's share of its mask (mask / sharing),
       so ``mpirun -n 4`` inside a one-task ``sbatch -c 16`` still gives 4 threads per rank.
    3. The mask divided among the ranks that share it: a rank bound to its own cores (``srun``'s
       task binding, ``mpirun --bind-to``) uses its whole mask; unbound ranks (every rank sees the
       whole node, or one cgroup cpuset that confines the whole job) split it evenly.

    A value that is not a positive integer (``OMP_NUM_THREADS=auto``, ``0``, empty) is ignored and
    the next rule applies, as OpenMP runtimes ignore it; it is never an error, because a search
    already running must not fail over its environment.
    """
    share = max(1, mask_size // max(1, sharing))
    omp = _positive_int(env.get("OMP_NUM_THREADS"))
    if omp is not None:
        return omp
    per_task = _positive_int(env.get("SLURM_CPUS_PER_TASK"))
    if per_task is not None:
        return min(per_task, share)
    return share


def _affinity() -> frozenset[int] | None:
    """The cores this process may run on; None where the OS does not tell (not Linux)."""
    try:
        return frozenset(os.sched_getaffinity(0))
    except AttributeError:
        return None


def node_layout(comm) -> tuple[int, int]:  # noqa: ANN001
    """(node-local rank, ranks on this node) from an MPI communicator; (0, 1) without MPI."""
    local_rank, local_size, _ = _node(comm, None)
    return local_rank, local_size


def _node(comm, mask: frozenset[int] | None) -> tuple[int, int, int]:  # noqa: ANN001
    """(node-local rank, ranks on this node, ranks on this node with the same affinity ``mask``).

    Without a mask (not Linux) every rank on the node is assumed to share all of its cores.
    """
    if comm is None:
        return 0, 1, 1
    from mpi4py import MPI

    local = comm.Split_type(MPI.COMM_TYPE_SHARED)
    try:
        masks = local.allgather(sorted(mask) if mask is not None else None)
        rank, size = local.Get_rank(), local.Get_size()
    finally:
        local.Free()
    sharing = size if mask is None else sum(m == masks[rank] for m in masks)
    return rank, size, sharing


def place(comm=None) -> Placement:  # noqa: ANN001
    """Pick this rank's device and limit torch's threads to its share of the cores (see :func:`threads_for`).

    Collective over ``comm`` when one is given: every rank of it must call this.
    """
    mask = _affinity()
    local_rank, local_size, sharing = _node(comm, mask)
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    device = f"cuda:{local_rank % gpus}" if gpus else "cpu"
    mask_size = len(mask) if mask is not None else (os.cpu_count() or 1)
    threads = threads_for(mask_size, sharing, os.environ)
    torch.set_num_threads(threads)
    return Placement(device, threads, local_rank, local_size)
