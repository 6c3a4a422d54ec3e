"""Running trials on one rank (or one group of ranks): new trials, trials of dead jobs resumed from
their checkpoints, and what a rank does when it is preempted or its GPU is lost.

A trial's life here: claim (``start_trial``, or ``claim_dead`` for a RUNNING trial whose heartbeat
stopped), tell the group's followers what to train, beat while training, train with a checkpoint in
the study's work folder (every epoch, and every ``trial_checkpoint_minutes``), store the outcome and
delete the checkpoint. On a preemption signal the trial is checkpointed where it is, released (still
RUNNING, but dead at once) and the rank takes no more trials; the next job resumes it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

from ..exceptions import ConfigError
from ..storage import FAILED, PRUNED, Store, Study, Trial, TrialTakenOver, holder_grace, transient
from ._devices import Placement
from ._heartbeat import GRACE_INTERVALS, Heartbeat, grace_period, heartbeat_interval
from ._objective import TrialOutcome, while_interrupted
from ._objectives import Scored, score
from ._preemption import StopRequest
from ._reporter import EpochReporter
from ._space import SearchSpace
from ._weights import KeptWeights, weights_folder
from ._workers import DONE, Workers

Objective = Callable[..., TrialOutcome]

Ran = tuple[dict, Trial, Scored, dict | None]  # (params, stored trial, its scored outcome, its metrics)

# A trial whose runs died holding it this many times in a row without reporting a new epoch in between is
# resumed no more: the next such death fails it (it kills its process: out of memory, a segfault).
MAX_CRASHES = 2


class Trials:
    """This rank's trials. Leaders call :meth:`new` and :meth:`resume_dead`; followers :meth:`follow`."""

    def __init__(self, *, store: Store, study: Study, space: SearchSpace, objective: Objective,
                 placement: Placement, workers: Workers, rank: int, folder: Path, backend: str | None = None,
                 on_stored: Callable[[Trial, Scored, float], None] | None = None) -> None:
        self.store, self.study, self.space, self.objective = store, study, space, objective
        self.backend = backend  # the one proposing this job's new trials, stored with each
        self.placement, self.workers, self.rank, self.folder = placement, workers, rank, folder
        self.on_stored = on_stored
        # the kept weights of the front (or best) trials, beside the trials' folder in the study's work folder
        self.kept = KeptWeights(store, study, space.keep_weights, weights_folder(folder.parent), rank)
        self.device = placement.device if workers.k == 1 else f"{placement.device} +{workers.k - 1}"
        self.group = {"group": workers.group} if workers.group is not None else {}  # custom objectives need not know
        self.stop = StopRequest()
        self.lost = False  # a CUDA error poisoned this rank's device
        self.full = False  # new() found the budget taken
        self.heartbeat = Heartbeat(store) if workers.leader else None
        minutes = space.trial_checkpoint_minutes
        self.checkpoint_every = 60.0 * minutes if minutes else None
        self._look_for_dead = 0.0  # monotonic time of the next look (see resume_dead)

    def close(self) -> None:
        """The end of the job's trials on this rank: no more heartbeats. The signal handlers stay until the
        job's closing barrier is passed (``stop.restore()``): a rank waiting there for one still training
        must take a preemption signal as that one does, not die of it and take the job down with it."""
        if self.heartbeat is not None:
            self.heartbeat.close()

    @property
    def closed(self) -> bool:
        """This rank takes no more trials (preempted, or its device is lost)."""
        return self.lost or self.stop()

    def checkpoint(self, trial: Trial) -> Path:
        return self.folder / f"trial_{trial.number}.ckpt"

    # -- leaders --------------------------------------------------------------------------------------------------
    def new(self, params: dict, island: int | None, limit: int | None = None) -> Ran | None:
        """Claim a slot for ``params`` and run it; None once ``limit`` trials exist (``full``), when closed,
        or when the run was not stored (preempted, taken over, left resumable)."""
        if self.closed:
            self.workers.send_task(None)
            return None
        try:
            config = self.space.trial_config(params, threads=self.placement.threads)
        except ConfigError:
            config = None  # an invalid combination: run_trial stores the trial FAILED with the reason
        try:
            trial = self.store.start_trial(self.study, params=params, rank=self.rank, island=island,
                                           device=self.device, config=config, limit=limit, backend=self.backend,
                                           grace=grace_period())
        except BaseException:
            self.workers.send_task(None)  # the followers must not wait for a trial that never starts
            raise
        if trial is None:
            self.full = True
            self.workers.send_task(None)
            return None
        return self._run(trial, params, config, resume=False)

    def turn(self, params: dict, island: int | None, limit: int | None = None) -> Ran | None:
        """One proposal's turn (the Propulate backend's evaluation): resume a dead trial if there is one, else
        run ``params`` (see new). The group's followers get exactly one task message, as they follow once per
        turn: a resumed trial that ran without being stored (preempted, taken over) is the turn's, and a failed
        look for dead trials sends "nothing" (they waited for a second message, or for one never sent)."""
        sent = self.workers.tasks_sent
        try:
            ran = self.resume_dead()
            if ran is None and (self.workers.group_comm is None or self.workers.tasks_sent == sent):
                ran = self.new(params, island, limit)  # (alone, a rank runs the proposal after a resumed trial too)
        finally:
            if self.workers.tasks_sent == sent:
                self.workers.send_task(None)
        return ran

    def resume_dead(self, *, now: bool = False) -> Ran | None:
        """Resume one RUNNING trial of a dead job (its deadline has passed: see Store.claim_dead), from
        its checkpoint: same number, params and seed. None when there is none (or when closed).

        Looks at most once per heartbeat interval unless ``now``: a trial becomes dead six intervals
        after its last beat, or at once when its job released it (preempted, stopped), and looking once
        per interval finds either at most one interval later, where looking before every trial of a
        fast search cost every trial a query. The end-of-job drain looks every time."""
        if self.closed or not now and time.monotonic() < self._look_for_dead:
            return None
        while True:
            trial = self.store.claim_dead(self.study, grace=grace_period(), rank=self.rank, device=self.device)
            if trial is None:
                self._look_for_dead = time.monotonic() + heartbeat_interval()
                return None
            if trial.crashes <= MAX_CRASHES:
                break
            self._give_up(trial)
        where = f"epoch {trial.last_epoch or 0}" if self.checkpoint(trial).exists() else "scratch (no checkpoint)"
        print(f"[rank {self.rank}] resuming trial {trial.number} of an earlier job from {where}", flush=True)
        return self._run(trial, trial.params, trial.config, resume=True)

    def _give_up(self, trial: Trial) -> None:
        """A trial whose runs died holding it more than MAX_CRASHES times in a row (it kills its process: out
        of memory, a segfault) is FAILED with the reason, not resumed by every job forever."""
        error = (f"crashed: {trial.crashes} runs of this trial in a row died while training it, with no epoch "
                 f"finished in between (out of memory, a crash, a node failure; see the jobs' logs); not resumed "
                 f"again after {MAX_CRASHES} resumes")
        with contextlib.suppress(TrialTakenOver):
            self.store.finish_trial(trial.id, state=FAILED, error=error, epochs=[])
        self.checkpoint(trial).unlink(missing_ok=True)
        self.kept.path(trial.number).unlink(missing_ok=True)  # written by a run that died before storing
        print(f"[rank {self.rank}] trial {trial.number}: {error}", file=sys.stderr, flush=True)

    def drain(self) -> None:
        """At the end of a job: resume the dead trials, including those that stopped beating moments ago (a
        job killed just before this one started, whose trials look alive until their grace period has
        passed), so the budget is met by this job; live trials of other jobs are left to them. Each RUNNING
        trial is watched until it finishes, beats again (a live job holds it) or is resumed here. Then
        release the followers."""
        interval = heartbeat_interval()
        watched: dict[int, tuple] | None = None  # id: (number, heartbeat, deadline) when first seen
        told: set[int] = set()
        # one read per look; often at first, as the trials watched are mostly the last ones of this job's other
        # ranks, which end within moments (a look every 0.5 s from the start kept the Optuna backend's ranks
        # up to 0.5 s past their job's last trial), then every half interval (at most 0.5 s) for the others
        pause, longest = 0.01, min(interval / 2, 0.5)
        waiting_said = False
        while not self.closed:
            if self.resume_dead(now=True) is not None:
                continue
            running = self.store.heartbeats(self.study)
            watched = running if watched is None else watched
            watched = {i: seen for i, seen in watched.items() if running.get(i) == seen}  # still silent
            if not watched:
                break
            now = self.store.now()
            for trial_id, (number, beat, deadline) in watched.items():
                if trial_id in told or beat is None:
                    continue
                # the holding job's grace period (and so its interval), as its deadline says; ours without one
                grace = holder_grace(beat, deadline)
                grace = grace_period() if grace is None else grace
                silent = (now - beat).total_seconds()
                if silent > 1.5 * grace / GRACE_INTERVALS:
                    told.add(trial_id)
                    print(f"[rank {self.rank}] trial {number} stopped beating {int(silent)}s ago (its job was "
                          f"stopped?): resuming it once {int(grace)}s have passed without a beat", flush=True)
            # a trial that has not beaten for 1.5 of our intervals is not one of this job's (whose ranks beat every
            # interval): a job with a long interval beats rarely, so say why this job has not ended yet, once
            if not waiting_said:
                quiet = sorted(number for i, (number, beat, _) in watched.items() if i not in told
                               and beat is not None and (now - beat).total_seconds() > 1.5 * interval)
                if quiet:
                    waiting_said = True
                    print(f"[rank {self.rank}] waiting for trial(s) {', '.join(map(str, quiet))} of other jobs: each "
                          "is left to its job once it beats again, or resumed here once its heartbeat is overdue",
                          flush=True)
            time.sleep(pause)
            pause = min(1.5 * pause, longest)
        self.workers.send_task(DONE)

    def _run(self, trial: Trial, params: dict, config: dict | None, *, resume: bool) -> Ran | None:
        try:
            return self._train_and_store(trial, params, config, resume=resume)
        except BaseException:
            # Ctrl-C, a storage failure, a second signal: the job ends in order with the trial RUNNING. Free
            # it (as preemption does), so the next job resumes it at once and counts no death of its run
            if self.heartbeat is not None:
                self.heartbeat.stop()
            with contextlib.suppress(Exception):
                self.store.release(trial.id)
            raise

    def _train_and_store(self, trial: Trial, params: dict, config: dict | None, *, resume: bool) -> Ran | None:
        checkpoint = self.checkpoint(trial)
        self.workers.send_task({"params": params, "config": config, "checkpoint": str(checkpoint), "resume": resume})
        max_epochs = (config or {}).get("train", {}).get("epochs", 0)
        reporter = EpochReporter(store=self.store, study=self.study, trial_id=trial.id,
                                 objectives=self.space.objectives, pruner=self.space.pruner, max_epochs=max_epochs,
                                 stored_epochs=(trial.last_epoch or 0) if resume else 0,
                                 label=f"[rank {self.rank}] trial {trial.number}")
        report = reporter if self.workers.group is None else _shared(reporter, self.workers)
        heartbeat = self.heartbeat
        assert heartbeat is not None
        heartbeat.start(trial.id)
        try:
            outcome, broken, cause = self.workers.trial(lambda: self.objective(
                self.space, params, device=self.placement.device, threads=self.placement.threads, report=report,
                config=config, checkpoint=checkpoint, resume=resume, should_stop=lambda: self.stop() or heartbeat.lost,
                checkpoint_every=self.checkpoint_every, **self.group))
        except BaseException:  # interrupted: keep the epochs it reached; the trial stays RUNNING (resumable)
            self.heartbeat.stop()
            with contextlib.suppress(Exception):
                reporter.flush()
            raise
        if broken:  # before any early return below: the trial's process group is unusable
            self._group_lost(trial, outcome.error if outcome.group_broken else None)
            if outcome.error and cause and outcome.group_broken:  # store the cause, not the wait for it
                outcome = dataclasses.replace(outcome, error=f"{cause}\n(the other ranks: {outcome.error})")
        if outcome.preempted:
            self.heartbeat.stop()
        if outcome.preempted and heartbeat.lost:
            return self._taken_over(trial)
        if outcome.preempted:  # (in a group, maybe a follower's signal: the leader stops taking trials too)
            self.stop.signal = self.stop.signal or signal.SIGTERM
            try:
                reporter.flush()
            except TrialTakenOver:
                return self._taken_over(trial)
            self.store.release(trial.id)
            print(f"[rank {self.rank}] trial {trial.number} checkpointed at step boundary; the next job of the "
                  f"study resumes it", file=sys.stderr, flush=True)
            return None
        scored = score(outcome.state, outcome.metrics, outcome.error, self.space.objectives, self.space.constraints)
        if scored.state == PRUNED:
            reached = max((e["epoch"] for e in outcome.epochs or ()), default=None)
            scored = dataclasses.replace(scored, stopped_at=reporter.pruned_at or reached)
        values = scored.values
        if not heartbeat.lost:  # a run that lost its trial must not overwrite the new owner's weights
            # before storing (see _weights.py), still beating: a large model's write may take a while
            self.kept.write(trial, scored, outcome.final_weights, outcome.metrics)
        self.heartbeat.stop()
        try:
            self.store.finish_trial(trial.id, state=scored.state, value=values[0] if values else None, values=values,
                                    feasible=scored.feasible, metrics=outcome.metrics,
                                    epochs=outcome.epochs or reporter.pending,  # a failed trial keeps its epochs
                                    rank_trajectory=outcome.trajectory, error=scored.error,
                                    rerun_from=reporter.rerun_from)
        except TrialTakenOver:
            return self._taken_over(trial)
        except RuntimeError as exc:
            if while_interrupted(exc):  # Ctrl-C while storing: the trial stays RUNNING, resumable
                raise KeyboardInterrupt from exc
            print(f"[rank {self.rank}] trial {trial.number}: storing its outcome failed ({exc}); its values: "
                  f"state {scored.state}, metrics {outcome.metrics}", file=sys.stderr, flush=True)
            if transient(exc) and checkpoint.exists():
                # a lock timeout, a dropped connection: keep the checkpoint and leave the trial to be resumed
                # (by this job's drain, or the next job), which replays its epochs and stores it exactly
                with contextlib.suppress(Exception):
                    self.store.release(trial.id)
                print(f"[rank {self.rank}] trial {trial.number} is left resumable from its checkpoint",
                      file=sys.stderr, flush=True)
                return None
            # the outcome cannot be stored as it is (it would fail again): never leave the trial RUNNING
            scored = Scored(FAILED, None, None, f"storing the outcome failed: {exc}")
            self.store.finish_trial(trial.id, state=FAILED, error=scored.error)
        checkpoint.unlink(missing_ok=True)
        self.kept.prune(trial)  # the files of trials this one (or another) pushed out of the keep set
        if self.on_stored is not None:
            self.on_stored(trial, scored, outcome.seconds)
        if outcome.device_lost:
            self.lost = True
            print(f"[rank {self.rank}] {self.placement.device} is unusable after trial {trial.number} "
                  f"({(scored.error or '').splitlines()[0]}): this rank takes no more trials; resume the study in a "
                  f"new job to use it again", file=sys.stderr, flush=True)
        return params, trial, scored, outcome.metrics

    def _group_lost(self, trial: Trial, error: str | None) -> None:
        self.lost = True
        first = (error or "").partition("\n")[0] or "on another rank of the trial"
        print(f"[rank {self.rank}] the ranks of trial {trial.number} lost their connection (a collective failed: "
              f"{first}): these ranks take no more trials; resume the study in a new job to use them again",
              file=sys.stderr, flush=True)

    def _taken_over(self, trial: Trial) -> None:
        """Another job claimed this trial while we ran it (our heartbeat looked dead to it): it is theirs
        now, with its checkpoint; this run's outcome is dropped, unstored."""
        print(f"[rank {self.rank}] trial {trial.number} was taken over by another job (its heartbeat looked dead "
              "there); dropping this run of it", file=sys.stderr, flush=True)

    # -- followers ----------------------------------------------------------------------------------------------
    def follow(self) -> str:
        """Train the leader's next trial with it: "trained", "none" or "done" (see Workers.follow)."""

        def train(task: dict, report: Callable[[dict], bool]) -> TrialOutcome:
            outcome = self.workers.trial(lambda: self.objective(
                self.space, task["params"], device=self.placement.device, threads=self.placement.threads,
                report=report, config=task["config"], checkpoint=Path(task["checkpoint"]), resume=task["resume"],
                save=False, should_stop=self.stop, checkpoint_every=self.checkpoint_every, **self.group))[0]
            self.lost = self.lost or outcome.device_lost  # the group's closing barrier skips a lost device
            return outcome

        return self.workers.follow(train)

    def follow_to_the_end(self) -> None:
        while self.follow() != "done":
            pass


def _shared(reporter: EpochReporter, workers: Workers) -> Callable[[dict], bool]:
    """A group leader's epoch report: the pruner's keep/stop decision goes to the followers too; if
    storing the epoch fails they are told to stop, so every rank leaves the trial at the same epoch."""

    def report(record: dict) -> bool:
        try:
            keep = reporter(record)
        except BaseException:
            workers.send(False)
            raise
        return workers.send(keep)

    return report
