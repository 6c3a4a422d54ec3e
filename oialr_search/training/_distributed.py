"""A trial trained by several ranks of one node: torch.distributed over an MPI sub-communicator.

Data parallel as DistributedDataParallel does it, with what OIALR needs on top:

- every rank takes its share of each global batch (``train.batch_size`` stays the global batch) and
  weighs its loss by its share, so the averaged gradient is the global batch's mean gradient even
  when the last batch does not split evenly;
- the DDP wrapper is rebuilt after every OIALR event (the switch replaces weights by factors, an
  update changes Σ's shape), and rebuilding it broadcasts the first rank's parameters and buffers;
- the optimizer state is broadcast from the first rank after every event too. Every rank computes
  the same SVDs on the same Σ (DDP keeps them identical), so the broadcast only removes any last-bit
  difference a library might leave; that the ranks kept the same ranks is checked first, and a
  mismatch is an error rather than a silent divergence of the replicas.
"""

from __future__ import annotations

import datetime
import gc
import socket
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from .._environment import seconds_from_env
from ..exceptions import ConfigError
from ..lowrank import LowRankWeight

# A collective that waits longer than this fails instead of hanging the job (a rank of the trial died or
# failed alone); ``OIALR_SEARCH_COLLECTIVE_TIMEOUT`` (seconds) changes it.
COLLECTIVE_TIMEOUT = datetime.timedelta(minutes=10)

# What gloo says when a group's communication broke (a collective timed out, a peer went away): a process
# group does not recover from that, so every later collective of it fails at once. torch raises DistError
# (DistBackendError for NCCL) for the rest; an ordinary error merely mentioning a connection is not one.
_BROKEN = ("gloo/transport", "pair closure")


def collective_timeout() -> datetime.timedelta:
    """Raises EnvironmentSettingError for a malformed ``OIALR_SEARCH_COLLECTIVE_TIMEOUT``."""
    return datetime.timedelta(seconds=seconds_from_env("OIALR_SEARCH_COLLECTIVE_TIMEOUT",
                                                       COLLECTIVE_TIMEOUT.total_seconds()))


def collective_failed(exc: BaseException) -> bool:
    """Whether ``exc`` says that the group's communication broke (see _BROKEN)."""
    return isinstance(exc, dist.DistError) or isinstance(exc, RuntimeError) and any(m in str(exc) for m in _BROKEN)


@dataclass(frozen=True)
class TrialGroup:
    """This rank's place among the ranks that train one trial together."""

    rank: int
    size: int
    device: str = "cpu"

    @property
    def leader(self) -> bool:
        return self.rank == 0


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_trial_group(comm: Any, device: str) -> TrialGroup | None:  # noqa: ANN401 - an mpi4py communicator
    """Start torch.distributed over the ranks of ``comm`` (one process group for the whole search:
    a rank belongs to one trial group). None for a one-rank group. Collective over ``comm``."""
    if comm is None or comm.Get_size() == 1:
        return None
    from mpi4py import MPI

    hosts = comm.allgather(MPI.Get_processor_name())
    if len(set(hosts)) > 1:
        raise ConfigError(f"--ranks-per-trial: a trial's ranks must share one node, got {sorted(set(hosts))}; "
                          "place consecutive ranks on the same node (e.g. srun --distribution=block)")
    port = comm.bcast(_free_port() if comm.Get_rank() == 0 else None, root=0)
    backend = "nccl" if device.startswith("cuda") else "gloo"
    # Imported before the group exists: its functions' default arguments would otherwise hold the group
    # for good (DDP imports it on first use), so destroying the group could not join its worker threads
    import torch.distributed.nn.functional  # noqa: F401
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=comm.Get_rank(),
                            world_size=comm.Get_size(), timeout=collective_timeout())
    return TrialGroup(comm.Get_rank(), comm.Get_size(), device)


def close_trial_group(group: TrialGroup | None, *, skip_barrier: bool = False) -> None:
    """End torch.distributed on this rank, on the path where every rank of the group gets here
    (collective). Left to interpreter shutdown, a gloo worker thread may still be dropping a finished
    collective's tensors, which needs the GIL that the exiting interpreter no longer gives: the process
    aborts ("terminate called without an active exception", exit 134) after a successful run. The
    barrier makes every earlier collective finish; destroying the group then joins its worker threads,
    provided nothing else holds the group (DDP's helper module would: see init_trial_group; so would
    an exception kept from inside a DDP forward). ``skip_barrier``: the group's communication or a
    rank's device is broken; the group is only destroyed. The group is destroyed even when the barrier
    fails."""
    if group is None or not dist.is_initialized():
        return
    gc.collect()  # a DDP wrapper left in a reference cycle would keep the group, and its threads, alive
    try:
        if not skip_barrier:
            device = torch.device(group.device)
            # NCCL's barrier runs on the current CUDA device unless told: a group that trained nothing in
            # this job never set it, and all its ranks would meet on cuda:0
            if device.type == "cuda":
                dist.barrier(device_ids=[_index(device)])
            else:
                dist.barrier()
    finally:
        dist.destroy_process_group()


def _index(device: torch.device) -> int:
    """A CUDA device's index (a bare "cuda" is the current device)."""
    return device.index if device.index is not None else torch.cuda.current_device()


def shard(x: torch.Tensor, group: TrialGroup | None) -> torch.Tensor:
    """This rank's rows of a global batch (rank r takes rows r, r+K, …)."""
    return x if group is None else x[group.rank::group.size]


def share(local: int, global_: int, group: TrialGroup | None) -> float:
    """The weight of a rank's mean loss so the ranks' averaged gradients are the global batch's mean."""
    return 1.0 if group is None else local * group.size / global_


def all_reduce_sum(t: torch.Tensor, group: TrialGroup | None) -> torch.Tensor:
    if group is not None:
        dist.all_reduce(t)
    return t


def gather_objects(obj: Any, group: TrialGroup | None) -> list[Any] | None:  # noqa: ANN401 - any picklable
    """Every rank's ``obj``, in rank order, on every rank (collective); None without a group."""
    if group is None:
        return None
    everyone: list[Any] = [None] * group.size
    dist.all_gather_object(everyone, obj)
    return everyone


def average_norm_statistics(model: nn.Module, group: TrialGroup | None) -> None:
    """Give every rank the mean of the ranks' BatchNorm running statistics (collective), as timm's
    distribute_bn does. DDP broadcasts the first rank's buffers before each forward, so after the last
    step each rank holds statistics updated by its own share: evaluated as they are, each rank would
    score a slightly different model, and none of them the one that is saved."""
    if group is None:
        return
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._NormBase) and module.track_running_stats:
            for buf in (module.running_mean, module.running_var):
                if buf is not None:
                    dist.all_reduce(buf)
                    buf /= group.size


def group_max(value: float, group: TrialGroup, device: torch.device) -> float:
    """The largest of the group's values, on every rank (float64, so a monotonic clock reading keeps
    sub-microsecond resolution)."""
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t.item())


def wrap(model: nn.Module, device: torch.device, group: TrialGroup | None) -> nn.Module:
    """The module to run training forwards through: DDP over the group (broadcasting the first rank's
    parameters and buffers), or the model itself."""
    if group is None:
        return model
    ids = [_index(device)] if device.type == "cuda" else None
    # The frozen bases U and Vᵀ are buffers: DDP would broadcast all of them before every forward (about
    # the model's size near full rank). They only change at OIALR events, after which this wrapper is
    # rebuilt, and building it broadcasts them once. BatchNorm statistics keep their per-forward sync.
    frozen = [name for name, module in model.named_modules() if isinstance(module, LowRankWeight)
              for name in (f"{name}.U", f"{name}.Vh")]
    nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, frozen)
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)  # buffers sync before every forward by default


def sync_after_event(model: nn.Module, optimizer: torch.optim.Optimizer, ranks: dict[str, int],
                     group: TrialGroup | None) -> None:
    """After an OIALR event: check every rank kept the same ranks, then give all ranks the first
    rank's bases and optimizer state (the parameters follow when the DDP wrapper is rebuilt)."""
    if group is None:
        return
    mine = list(ranks.items())
    everyone: list[Any] = [None] * group.size
    dist.all_gather_object(everyone, mine)
    if any(other != mine for other in everyone):
        raise RuntimeError(f"OIALR update: the ranks of a trial kept different layer ranks ({everyone}); "
                           "the replicas would diverge")
    for module in model.modules():  # the bases: the rebuilt DDP wrapper leaves them out (see wrap)
        if isinstance(module, LowRankWeight):
            dist.broadcast(module.U, src=0)
            dist.broadcast(module.Vh, src=0)
    for p in model.parameters():
        for value in optimizer.state.get(p, {}).values():
            if torch.is_tensor(value) and value.device == p.device:  # AdamW's step counter stays on the host
                dist.broadcast(value, src=0)


def rewrap(model: nn.Module, optimizer: torch.optim.Optimizer, ranks: dict[str, int], device: torch.device,
           group: TrialGroup) -> nn.Module:
    """The DDP wrapper after an OIALR event. The caller drops the old wrapper first, and for good: its
    reducer holds the old parameters (each event makes new Σ Parameters of new shapes), so the new ones
    would never be averaged across ranks. Then the state is synchronized and a new wrapper is built."""
    gc.collect()  # the old reducer may sit in reference cycles
    sync_after_event(model, optimizer, ranks, group)
    return wrap(model, device, group)
