"""Workers: the world's ranks in groups of ``--ranks-per-trial`` K consecutive ranks, each group
training one trial at a time with DistributedDataParallel (see training/_distributed.py).

A group's first rank, its leader, is the worker the backends see: it gets the proposals, claims the
trial in the store, reports the epochs, asks the pruner and stores the outcome. The other ranks
follow: for every trial the leader sends them the parameters (None: nothing to train) and, after
every epoch, the pruner's decision, so all K ranks train the same trial and stop at the same epoch;
after the trial it sends OVER, and the ranks exchange how their runs ended (``Workers.trial``).
With K = 1 every rank is its own leader and nothing is sent.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..exceptions import OIALRSearchError
from ..training._distributed import TrialGroup, close_trial_group, init_trial_group

DONE = "done"  # the leader's last message to its followers
OVER = "over"  # the leader's message after every trial, whatever the followers were waiting for


@dataclass
class Workers:
    """This rank's place among the workers."""

    k: int  # ranks per trial
    worker: int  # this rank's worker (group) index
    workers: int  # how many groups
    group_comm: Any = None  # the MPI sub-communicator of this rank's group (None when k == 1)
    group: TrialGroup | None = None  # the torch.distributed view of it
    _over: bool = False  # a follower received OVER in place of an epoch decision
    broken: bool = False  # a collective of the group's process group failed: it no longer communicates
    tasks_sent: int = 0  # a leader's send_task calls (Trials.turn sends one per Propulate generation)

    @property
    def leader(self) -> bool:
        return self.group is None or self.group.leader

    def send(self, value: Any) -> Any:  # noqa: ANN401
        """Leader: send ``value`` to the group's other ranks. Followers: receive it. Collective."""
        return value if self.group_comm is None else self.group_comm.bcast(value, root=0)

    def send_task(self, value: Any) -> Any:  # noqa: ANN401
        """``send`` for what the group trains next (a trial; None: nothing this time; DONE), which the followers
        wait for in ``follow`` sleeping: the wait may last the leader's whole end-of-job drain (up to a grace
        period), which a blocking bcast, polled at full speed by MPICH, spent spinning a core."""
        if self.leader:
            self.tasks_sent += 1
        if self.group_comm is not None:
            idle_barrier(self.group_comm)
        return self.send(value)

    def trial(self, run: Callable[[], Any]) -> tuple[Any, bool, str | None]:
        """Every rank of a group runs each trial through this: ``run()`` (returning a TrialOutcome), then
        ``_after_trial`` with how it ended, also when ``run`` raises an Exception (a custom objective's),
        so no rank waits for one that left. Returns (outcome, broken, cause) as ``_after_trial`` does."""
        try:
            outcome = run()
        except Exception as exc:
            self._after_trial(error=f"{type(exc).__name__}: {exc}", broken=False)
            raise
        return (outcome, *self._after_trial(error=outcome.error, broken=outcome.group_broken))

    def _after_trial(self, *, error: str | None, broken: bool) -> tuple[bool, str | None]:
        """Collective over MPI, not the trial's own process group: whether a rank's run broke the group's
        communication, and the error of the first rank that failed otherwise (the cause the others waited
        for in a collective). A rank that fails alone leaves the others waiting until their collective
        times out; this is where the group learns of it, so the leader stops taking trials instead of
        failing every later one at once."""
        if self.group_comm is None:
            return False, None
        if self.leader:
            self.group_comm.bcast(OVER, root=0)
        elif not self._over:  # epoch decisions the leader sent after this rank's run ended are dropped
            while self.group_comm.bcast(None, root=0) != OVER:
                pass
        self._over = False
        reports = self.group_comm.allgather((broken, error))
        cause = next((f"rank {i} of the trial failed: {e}" for i, (b, e) in enumerate(reports) if e and not b), None)
        broken = any(b for b, _ in reports)
        self.broken = self.broken or broken
        return broken, cause

    def close(self, *, lost: bool = False) -> None:
        """At the end of the job, on every rank of the group once the leader sent DONE: end the trials'
        process group (see close_trial_group). ``lost``: this rank's device is unusable. Failing to end
        it cleanly costs a warning, never the job's result."""
        if self.group_comm is None:
            return
        skip = any(self.group_comm.allgather(self.broken or lost))  # the group agrees: no rank waits alone
        try:
            close_trial_group(self.group, skip_barrier=skip)
        except Exception as exc:  # noqa: BLE001 - every trial is stored by now
            what = ": ".join([type(exc).__name__, *str(exc).splitlines()[:1]])
            print(f"[rank {self.worker * self.k + self.group.rank}] could not end the trials' process group cleanly "
                  f"({what}); the results are stored", file=sys.stderr, flush=True)

    def follow(self, train: Callable[[dict, Callable[[dict], bool]], object]) -> str:
        """Follower: train what the leader sends next (``train(task, report)``, ``task`` the dict the
        leader sent). Returns "trained", "none" (the leader had nothing this time) or "done" (the
        leader is finished: no more messages)."""
        task = self.send_task(None)
        if task is None or task == DONE:
            return "done" if task == DONE else "none"
        train(task, self._decision)
        return "trained"

    def _decision(self, _record: dict) -> bool:
        """Follower, after each epoch: the leader's keep/stop decision. OVER in its place means the
        leader's run ended there (it failed after the epoch's last collective): stop too."""
        decision = self.send(None)
        if decision == OVER:
            self._over = True
            return False
        return decision


def idle_barrier(comm: Any, poll: float = 0.05) -> None:  # noqa: ANN401
    """``comm.Barrier()``, sleeping while it waits: MPICH polls a blocking barrier at full speed, so a rank
    done with its trials would take a core from a rank still training one (a sweep saw an idle rank at
    99 % of a core while the last trial of a 2-core job ran many times slower).

    The sleeps start at 0.2 ms and grow by a quarter up to ``poll``: the barrier only advances when a rank
    tests it, one round of its messages per test, so sleeping ``poll`` from the start made even ranks that
    arrive together wait several polls (0.2–0.25 s at 8 ranks, a sixth of a zero-cost search's wall)."""
    assert poll > 0, "a zero poll would spin at full speed, which this function exists to avoid"
    request = comm.Ibarrier()
    delay = min(0.0002, poll)
    while not request.Test():
        time.sleep(delay)
        delay = min(1.25 * delay, poll)


def check_ranks_per_trial(k: int, world_size: int) -> None:
    if k < 1:
        raise OIALRSearchError(f"--ranks-per-trial: must be at least 1, got {k}")
    if world_size % k:
        raise OIALRSearchError(f"--ranks-per-trial {k}: {world_size} rank(s) do not split into trials of {k} ranks; "
                               f"launch a multiple of {k} ranks")


def split_workers(comm: Any, k: int, device: str) -> Workers:  # noqa: ANN401
    """Group consecutive ranks of ``comm`` K by K (Propulate's ``ranks_per_worker`` split) and start
    torch.distributed in each group. Collective."""
    rank, size = (comm.Get_rank(), comm.Get_size()) if comm is not None else (0, 1)
    if k == 1:
        return Workers(1, rank, size)
    from mpi4py import MPI

    hosts = comm.allgather(MPI.Get_processor_name())  # checked on every rank alike: all refuse, none waits
    spanning = [g for g in range(size // k) if len(set(hosts[g * k:(g + 1) * k])) > 1]
    if spanning:
        g = spanning[0]
        raise OIALRSearchError(f"--ranks-per-trial {k}: ranks {g * k}-{(g + 1) * k - 1} are on different nodes "
                               f"({', '.join(sorted(set(hosts[g * k:(g + 1) * k])))}); a trial's ranks must share "
                               "one node: place consecutive ranks together (e.g. srun --distribution=block)")
    group_comm = comm.Split(color=rank // k, key=rank)
    return Workers(k, rank // k, size // k, group_comm, init_trial_group(group_comm, device))
