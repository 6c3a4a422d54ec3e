"""Optuna backend: a sampler in every process, sharing trials through our database.

Each process keeps an in-memory Optuna study and, before every ask, adds the trials that finished
since its last look (``_finished``: read by a watermark, the lowest id still running), so a trial
that finishes after a later-numbered one still reaches every sampler. Nothing waits on Optuna's RDB
locks (which kept 8 workers on one SQLite file only 54% busy), it works with and without MPI, and a
resume just rebuilds the study from the database.

Multi-objective studies use Optuna's native support; the sampler is the space's (``_samplers``: the
GP, then TPE, by default); constraints reach the sampler through each trial's constraints (Optuna 5's
``set_constraint``). For TPE a pruned trial is told PRUNED, with its value at the epoch it stopped at
as its last intermediate value (single-objective), which is what TPE ranks pruned trials by: the later
they stopped, then the better that value (without it, every pruned trial tied). The GP ignores pruned
trials and knows of parallel proposals only through running trials, so it gets more (``_Feed``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Callable, Sequence

from ..storage import COMPLETE, FAILED, PRUNED, Store, Study, Trial
from ._dimension import Dimension
from ._finished import FinishedTrials
from ._objectives import Constraint, Scored, minimize_sense
from ._projection import projected_values
from ._space import SearchSpace


def _distribution(d: Dimension):  # noqa: ANN202
    import optuna

    if d.kind == "categorical":
        return optuna.distributions.CategoricalDistribution(list(d.choices))
    if d.kind == "int":
        return optuna.distributions.IntDistribution(int(d.low), int(d.high), log=d.log)
    return optuna.distributions.FloatDistribution(float(d.low), float(d.high), log=d.log)


def _violations(metrics: dict | None, constraints: Sequence[Constraint]) -> list[float]:
    """Optuna's convention: one number per bound, > 0 by how much it is violated. As many for every trial
    (the GP refuses trials with differing counts): a missing or non-finite metric violates each bound by 1."""
    out = []
    for c in constraints:
        v = (metrics or {}).get(c.metric)
        if v is None or not math.isfinite(v):
            out += [1.0] * ((c.low is not None) + (c.high is not None))
            continue
        if c.low is not None:
            out.append(c.low - v)
        if c.high is not None:
            out.append(v - c.high)
    return out


def _all_finite(values: Sequence[float | None] | None) -> bool:
    return bool(values) and all(v is not None and math.isfinite(v) for v in values)


def _projected_metrics(space: SearchSpace, projected: Sequence[float]) -> dict:
    """The metrics a projected pruned trial is judged by: its projected objectives only, so a constraint on
    any other metric (not projected) counts as violated, as with Propulate (``projected_feasible``)."""
    return {o.metric: v for o, v in zip(space.objectives, projected, strict=True)}


def _frozen(t: Trial, dists: dict, space: SearchSpace, projected: Sequence[float] | None = None):  # noqa: ANN202
    """``t`` as an Optuna trial; a PRUNED one with ``projected`` values as COMPLETE with those."""
    import optuna

    n = len(space.objectives)
    values = list(projected) if projected is not None else t.values
    ok = (t.state == COMPLETE or projected is not None) and _all_finite(values) and len(values) == n
    metrics = _projected_metrics(space, projected) if projected is not None else t.metrics
    extra = {}
    if space.constraints:
        extra = {"constraints": {f"c{i}": v for i, v in enumerate(_violations(metrics, space.constraints))}}
    if ok:
        return optuna.trial.create_trial(params=t.params, distributions=dists, values=values,
                                         state=optuna.trial.TrialState.COMPLETE, **extra)
    if t.state == PRUNED:
        steps = _last_step(t.last_epoch, t.values, n)
        return optuna.trial.create_trial(params=t.params, distributions=dists, state=optuna.trial.TrialState.PRUNED,
                                         intermediate_values=steps, **extra)
    return optuna.trial.create_trial(params=t.params, distributions=dists, state=optuna.trial.TrialState.FAIL,
                                     **extra)


def _last_step(epoch: int | None, values: Sequence[float | None] | None, objectives: int) -> dict[int, float]:
    """A pruned trial's intermediate values for Optuna: {stop epoch: its value then}; none for several
    objectives (Optuna keeps intermediate values for single-objective studies only) or without a
    finite value."""
    if objectives != 1 or epoch is None or not values or values[0] is None or not math.isfinite(values[0]):
        return {}
    return {int(epoch): float(values[0])}


DROPPED = object()  # what ``evaluate`` returns for a trial that ran but was not stored (see run_optuna)


class _Feed:
    """What one process's in-memory Optuna study has learned from the store.

    Trials of every process reach it once they finish (``add``). While the next proposal is the GP's
    (``gp``: ``sampler: gp``, or ``auto`` before its switch to TPE) it also gets the other processes'
    running trials as RUNNING placeholders, told FAIL once they leave RUNNING (the finished trial is then
    added like any other), and a PRUNED trial as COMPLETE with its projection to the end of training;
    one that cannot be projected yet (no completed trial reached its epoch) waits until a trial
    completes. A pruned trial without finite values (diverged) has nothing to project: it is added
    PRUNED, which the GP ignores, as Optuna's GP ignores failed trials. Once ``auto`` has switched, TPE
    gets trials as with ``sampler: tpe`` (what it was given before stays).
    """

    def __init__(self, ostudy, space: SearchSpace, store: Store, study: Study, dists: dict) -> None:  # noqa: ANN001
        from ._samplers import gp_trials

        self.ostudy, self.space, self.store, self.study, self.dists = ostudy, space, store, study, dists
        self.seen: set[int] = set()
        self.placeholders: dict[int, int] = {}  # store id of another process's running trial -> Optuna number
        self.unprojected: dict[int, tuple[Trial, bool]] = {}  # pruned trials waiting for a completed trial to
        # project with, and whether they are this process's own (told PRUNED already)
        self.fresh_completion = False  # a trial completed since the waiting ones were last tried
        self.complete = 0  # COMPLETE trials in the study (projected ones too): what auto switches by
        self._gp_trials = gp_trials(ostudy.sampler)
        self._offsets: dict = {}  # stop epoch -> projection offsets, read once per round (a resume reads many)

    @property
    def gp(self) -> bool:
        """Whether the next proposal is the GP's."""
        return self.complete < self._gp_trials

    def refresh(self) -> None:
        """Before each round of adding and before telling: projections from the store as it is now."""
        self._offsets = {}

    def sync(self, running: Sequence[Trial]) -> None:
        """Placeholders for the running trials not yet known; FAIL for those no longer running."""
        import optuna

        now = {t.id for t in running}
        for tid in [tid for tid in self.placeholders if tid not in now]:
            self.ostudy.tell(self.placeholders.pop(tid), state=optuna.trial.TrialState.FAIL)
        for t in running if self.gp else ():
            if t.id in self.placeholders or t.id in self.seen or set(t.params) != set(self.dists):
                continue
            try:
                self.ostudy.add_trial(optuna.trial.create_trial(
                    params=t.params, distributions=self.dists, state=optuna.trial.TrialState.RUNNING))
            except ValueError:
                continue  # a value outside the current space
            self.placeholders[t.id] = self.ostudy.get_trials(deepcopy=False)[-1].number

    def add(self, t: Trial) -> None:
        """A finished trial, once (a pruned one perhaps later, see the class doc)."""
        if t.id in self.seen:
            return
        self.seen.add(t.id)
        self._add(t)

    def retry_unprojected(self) -> None:
        """Add the waiting pruned trials if a trial completed since the last try, or as PRUNED once the
        proposals are TPE's (this process's own are in the study as PRUNED already)."""
        if self.unprojected and (self.fresh_completion or not self.gp):
            waiting, self.unprojected, self.fresh_completion = list(self.unprojected.values()), {}, False
            for t, told in waiting:
                self._add(t, told=told)

    def wait(self, t: Trial, *, told: bool = False) -> bool:
        """Keep a pruned trial the GP cannot learn from yet, if it can later (finite values); ``told``: this
        process's own, told PRUNED already."""
        if self.gp and _all_finite(t.values):
            self.unprojected[t.id] = (t, told)
            return True
        return False

    def _add(self, t: Trial, *, told: bool = False) -> None:
        """Add ``t`` (projected, for the GP), keep it waiting, or drop it: this process's own pruned trial
        (``told``) is in the study as PRUNED already."""
        import optuna

        if set(t.params) != set(self.dists) or t.state not in (COMPLETE, FAILED, PRUNED):
            return
        projected = self.projected(t.values, t.last_epoch) if t.state == PRUNED else None
        if projected is None and t.state == PRUNED and (self.wait(t, told=told) or told):
            return
        with contextlib.suppress(ValueError):  # a value outside the current space (edited before a resume)
            frozen = _frozen(t, self.dists, self.space, projected)
            self.ostudy.add_trial(frozen)
            self.fresh_completion |= t.state == COMPLETE
            self.complete += frozen.state == optuna.trial.TrialState.COMPLETE

    def projected(self, values: Sequence[float | None] | None, epoch: int | None) -> list[float] | None:
        """A pruned trial's values projected to the end of training, in the objectives' own directions
        (None for TPE, or with nothing to project with)."""
        objectives = self.space.objectives
        if not self.gp or not _all_finite(values) or len(values) != len(objectives):
            return None
        at_end = projected_values(self.store, self.study, objectives, epoch, minimize_sense(values, objectives),
                                  cache=self._offsets)
        return None if at_end is None else [v if o.minimize else -v for o, v in zip(objectives, at_end, strict=True)]


def run_optuna(*, space: SearchSpace, store: Store, study: Study, seed: int, rank: int,
               evaluate: Callable[[dict], tuple[Trial, Scored, dict | None] | None],
               resume: Callable[[], bool] | None = None, enqueue: Sequence[dict] = (),
               ready: Callable[[], None] | None = None) -> None:
    """Ask, evaluate, tell until ``evaluate`` finds the budget used up (returns None).

    ``evaluate(params)`` claims a slot in the store, trains, stores, and returns (the stored trial,
    its scored outcome, its metrics), None when there is nothing more to do, or ``DROPPED``.
    ``resume()``: run a trial of a dead job if there is one (True): it is not asked for, and reaches the
    sampler through the store like every other finished trial.
    ``enqueue``: parameter sets to try first (rank 0 only).
    """
    import optuna

    from ._samplers import make_sampler

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    dists = {d.key: _distribution(d) for d in space.dimensions}
    directions = [o.direction for o in space.objectives]
    sampler = make_sampler(space.sampler, (seed * 7919 + rank) % 2**32)  # numpy's RandomState takes [0, 2³²)
    ostudy = optuna.create_study(directions=directions, sampler=sampler)
    feed = _Feed(ostudy, space, store, study, dists)
    pending = list(enqueue)  # enqueued after the first sync, so a resume does not try them again
    reader = FinishedTrials(store, study)
    if ready is not None:
        ready()
    while True:
        finished, running = reader.poll()
        feed.refresh()
        for t in finished:
            feed.add(t)
        feed.retry_unprojected()
        feed.sync(running)
        if resume is not None and resume():
            continue
        for params in pending:
            ostudy.enqueue_trial(params, skip_if_exists=True)
        pending = []
        trial = ostudy.ask(dists)
        result = evaluate(dict(trial.params))
        if result is DROPPED:  # not stored this time (it is resumed later): ask again
            ostudy.tell(trial, state=optuna.trial.TrialState.FAIL)
            continue
        if result is None:
            ostudy.tell(trial, state=optuna.trial.TrialState.FAIL)
            return
        stored, scored, metrics = result
        feed.seen.add(stored.id)
        feed.refresh()
        projected = feed.projected(scored.values, scored.stopped_at) if scored.state == PRUNED else None
        judged = metrics if projected is None else _projected_metrics(space, projected)
        for i, v in enumerate(_violations(judged, space.constraints)):
            trial.set_constraint(f"c{i}", v)
        if scored.state == COMPLETE or projected is not None:  # a projection: learned from as completed
            ostudy.tell(trial, list(scored.values) if projected is None else projected)
            feed.fresh_completion |= scored.state == COMPLETE
            feed.complete += 1
        elif scored.state == PRUNED:
            for step, value in _last_step(scored.stopped_at, scored.values, len(directions)).items():
                trial.report(value, step)
            ostudy.tell(trial, state=optuna.trial.TrialState.PRUNED)
            # nothing to project it with yet: the GP learns from it once there is
            feed.wait(dataclasses.replace(stored, state=PRUNED, values=scored.values, last_epoch=scored.stopped_at,
                                          metrics=metrics), told=True)
        else:
            ostudy.tell(trial, state=optuna.trial.TrialState.FAIL)
