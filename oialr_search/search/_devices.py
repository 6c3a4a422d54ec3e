"""Device placement: each rank takes cuda:{node-local rank % GPUs}, or the CPU."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Placement:
    device: str
    threads: int
    local_rank: int
    local_size: int


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def node_layout(comm) -> tuple[int, int]:  # noqa: ANN001
    """(node-local rank, ranks on this node) from an MPI communicator; (0, 1) without MPI."""
    if comm is None:
        return 0, 1
    from mpi4py import MPI

    local = comm.Split_type(MPI.COMM_TYPE_SHARED)
    try:
        return local.Get_rank(), local.Get_size()
    finally:
        local.Free()


def place(comm=None) -> Placement:  # noqa: ANN001
    """Pick this rank's device and limit torch's threads to its share of the node's cores."""
    local_rank, local_size = node_layout(comm)
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    device = f"cuda:{local_rank % gpus}" if gpus else "cpu"
    threads = max(1, _cores() // local_size)
    torch.set_num_threads(threads)
    return Placement(device, threads, local_rank, local_size)
