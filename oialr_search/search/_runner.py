"""Running a search: storage set-up on rank 0, placement, the backend loop, progress output."""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import shutil
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sqlalchemy.exc import ArgumentError

from .._files import unusable_folder
from ..exceptions import OIALRSearchError
from ..storage import COMPLETE, FAILED, PRUNED, RUNNING, Store, Study, Trial
from ..storage._errors import storage_named
from ..storage._filesystems import sqlite_file
from ..storage._paths import check_writer_storage
from ..storage._sqlite import storage_failure
from ..training import stored_run_config
from ._devices import place
from ._execution import Ran, Trials
from ._heartbeat import grace_period
from ._objective import TrialOutcome, run_trial
from ._objectives import Scored
from ._optuna_backend import DROPPED
from ._space import SearchSpace, merge_overrides, same_overrides
from ._study_checks import data_problem, model_problem, new_study_problem
from ._work_folder import chosen_workdir, moved_note, peek_recorded_workdir, propulate_folder, trial_folder
from ._workers import Workers, check_ranks_per_trial, idle_barrier, split_workers

Objective = Callable[..., TrialOutcome]

BACKENDS = ("auto", "propulate", "optuna", "random")
DEFAULT_BUDGET = 20


@dataclass
class SearchRequest:
    study: str
    storage: str
    space: SearchSpace | None = None  # None: resume with the stored space
    backend: str = "auto"
    budget: int | None = None
    seed: int = 0
    overrides: tuple[str, ...] = ()  # --set key=value on the base config; on resume merged into the stored ones
    ranks_per_trial: int = 1  # ranks that train one trial together (DistributedDataParallel)
    workdir: str | None = None  # the study's work folder (trial checkpoints); default: next to a SQLite file
    storage_given: bool = True  # False: ``storage`` came from OIALR_SEARCH_STORAGE, which errors then name


def _world():
    try:
        from mpi4py import MPI
    except ImportError:
        return None
    return MPI.COMM_WORLD


def propulate_available() -> bool:
    try:
        import propulate  # noqa: F401
    except Exception:  # noqa: BLE001 - any import failure means "not usable here"
        return False
    return True


def _shown_overrides(items: tuple[str, ...] | list[str]) -> str:
    return " ".join(f"--set {item}" for item in items) or "no --set"


def _check_work_folder(req: SearchRequest, workdir: str | None) -> None:
    folder = trial_folder(req.storage, req.study, workdir, make=False)
    why = unusable_folder(folder)
    if why is not None:
        what = f"--workdir {req.workdir}" if req.workdir is not None else \
            f"the work folder study {req.study!r} was run with (--workdir {workdir})" if workdir is not None else \
            "work folder"
        raise OIALRSearchError(f"{what}: cannot make {folder} ({why}); give --workdir a folder you can write")


@dataclass(frozen=True)
class _Prepared:
    """What rank 0's set-up decided, for every rank."""

    study: Study
    backend: str
    budget: int
    finished: int  # trials finished before this job
    space: SearchSpace  # overrides applied
    seed: int  # this job's samplers'
    job: int  # jobs started on the study before this one
    workdir: str | None  # the --workdir used (given or recorded); None: the default work folder
    said_overrides: bool  # the set-up said the overrides (resume --set changed them)


def _prepare(req: SearchRequest, world_size: int) -> _Prepared:
    """Rank 0: open storage, create or load the study, count the trials to resume, pick the backend,
    count this job and seed it, and choose the work folder (see _work_folder.py).

    Every check of the user's input comes before the first write (bad ``--set`` even before the
    storage is opened), so a refused command changes nothing."""
    check_ranks_per_trial(req.ranks_per_trial, world_size)
    space = req.space.with_overrides(req.overrides) if req.space is not None and req.overrides else req.space
    problem = new_study_problem(req.study, req.seed, space) if space is not None else None  # run
    db = sqlite_file(req.storage)
    if problem is not None and db is not None and not db.exists():  # no database: a new study, refused unwritten
        raise OIALRSearchError(problem)
    checked = req.workdir
    with contextlib.suppress(ArgumentError):  # a malformed --storage: the Store says so just below
        check_writer_storage(req.storage)  # the storage's own faults first, worded as the Store words them
        checked = req.workdir if req.workdir is not None else peek_recorded_workdir(req.storage, req.study)
        _check_work_folder(req, checked)
    store = Store(req.storage)
    existing = store.find_study(req.study)
    workdir, recorded = chosen_workdir(req.workdir, existing)
    # recorded meanwhile (another job), or the peek could not read it (a given one: checked, only made absolute)
    if req.workdir is None and workdir != checked:
        _check_work_folder(req, workdir)
    if existing is None and problem is not None:  # judged once it is known to be new (a requeued job's is not)
        raise OIALRSearchError(problem)
    if existing is not None and req.budget is not None and req.space is None:  # resume (run keeps it: below)
        # the trials the budget admitted: finished, and RUNNING ones (live, or of dead jobs, which are resumed)
        done, started = store.count(existing, (COMPLETE, FAILED, PRUNED)), store.count(existing, (RUNNING,))
        if req.budget < done + started:  # a number of new trials, as Optuna's n_trials? Below them is no plan
            what = f"{done} finished" + (f" and {started} started" if started else "")
            raise OIALRSearchError(f"--budget {req.budget}: study {req.study!r} has {what} trials already (the "
                                   f"budget is the study's total over all its jobs, now {existing.budget}); give "
                                   f"--budget {done + started} or more, or leave it out to keep {existing.budget}")
    new_overrides = False
    if space is None:
        existing = existing or store.get_study(req.study)  # raises StudyNotFound with the known names
        space = SearchSpace.from_dict(existing.space)
        if req.overrides:  # resume --set: merged into the stored overrides, later wins
            stored = space.overrides
            space = space.with_overrides(merge_overrides(stored, req.overrides))
            new_overrides = not same_overrides(stored, space.overrides)
            problem = model_problem(space) if new_overrides else None
            if problem is not None:
                raise OIALRSearchError(problem)
    elif existing is not None:
        if existing.space.get("raw") != space.to_dict()["raw"]:
            raise OIALRSearchError(f"study {req.study!r} already exists with a different search space; "
                                   f"continue it with 'oialr-search resume --study {req.study}' or pick a new name")
        space = space.with_sampler_of(existing.space)
        stored = existing.space.get("overrides") or []
        if not same_overrides(stored, space.overrides):
            raise OIALRSearchError(f"study {req.study!r} was run with {_shown_overrides(stored)}, not "
                                   f"{_shown_overrides(space.overrides)}; continue it with 'oialr-search resume "
                                   f"--study {req.study}' (change a non-searched key there with --set) or pick a new "
                                   f"name")
    # a stored study's too: its data may have moved, or not be staged yet (the CLI checks this on every rank
    # first: each may see its own disk)
    problem = data_problem(space, stored=req.study if existing is not None else None)
    if problem is not None:
        raise OIALRSearchError(problem)
    wanted = req.backend if req.backend != "auto" else (existing.backend if existing else "propulate")
    backend = wanted
    workers = world_size // req.ranks_per_trial
    if backend == "propulate" and (workers < 2 or not propulate_available()):
        why = "propulate is not importable" if workers >= 2 else \
            "one worker (launch with mpiexec -n 2 or more)" if req.ranks_per_trial == 1 else \
            f"one worker of {req.ranks_per_trial} ranks (launch {2 * req.ranks_per_trial} ranks or more)"
        print(f"backend: Propulate cannot run here ({why}); using the Optuna fallback", flush=True)
        backend = "optuna"
    if existing is None:
        stored_space = {**space.to_dict(), **({"workdir": workdir} if workdir is not None else {})}
        study = store.create_study(name=req.study, space=stored_space, space_path=space.path, metric=space.metric,
                                   direction=space.direction, backend=wanted, seed=req.seed,
                                   budget=req.budget or DEFAULT_BUDGET,
                                   objectives=[o.to_dict() for o in space.objectives],
                                   constraints={c.metric: c.to_dict() for c in space.constraints})
    else:
        study = existing
        if new_overrides or workdir != recorded:
            study = dataclasses.replace(study, space=store.update_study_space(
                req.study, lambda stored: _updated_space(stored, req.overrides if new_overrides else (), workdir)))
            space = SearchSpace.from_dict(study.space) if new_overrides else space  # another job's --set too
    if new_overrides:
        print(f"resume: the base config is now overridden by {_shown_overrides(space.overrides)}", flush=True)
    if existing is not None and workdir != recorded:
        note = moved_note(req.storage, req.study, workdir, recorded)
        if note is not None:
            print(note, flush=True)
    elif existing is not None and req.workdir is None and workdir is not None:
        print(f"work folder: {trial_folder(req.storage, req.study, workdir, make=False).parent} (the study's "
              f"--workdir)", flush=True)
    if existing is not None and "precision" not in space.base.get("train", {}) and _trained_before_precision(
            store, study):
        space = dataclasses.replace(space, base=stored_run_config(space.base))
        print("resume: this study's trials trained in fp32 (an earlier release, before train.precision): its new "
              "trials do too; resume with --set train.precision=auto (or bf16) to change that", flush=True)
    budget = req.budget or study.budget
    if existing is not None and req.space is not None and budget < study.budget:
        # a job repeating an older command line must not undo a later resume --budget that raised it (the SLURM
        # template passes no --budget when requeued, so a lowered one holds too)
        print(f"run: study {study.name!r} keeps its budget of {study.budget} (run --budget {budget} never lowers a "
              f"stored budget; lower it with: oialr-search resume --study {study.name} --budget {budget})",
              flush=True)
        budget = study.budget
    if budget != study.budget:
        store.update_study(req.study, budget=budget)
    dead = store.dead_trials(study, grace=grace_period())
    if dead:  # never marked interrupted: another job's live trials beat, and dead ones are resumed
        print(f"resume: {dead} trial(s) of earlier jobs stopped running; they are resumed from their checkpoints "
              "first", flush=True)
    finished = store.count(study, (COMPLETE, FAILED, PRUNED))
    running = store.count(study, (RUNNING,))
    job = store.start_job(study)  # the set-up's last write, after every check of the input
    return _Prepared(study, backend, budget, finished, space, job_seed(req.seed, finished, running, job=job), job,
                     workdir, said_overrides=new_overrides)


def _updated_space(stored: dict, overrides: Sequence[str], workdir: str | None) -> dict:
    """A study's stored space with ``overrides`` merged into the ones stored now (later wins) and ``workdir``
    recorded (see Store.update_study_space)."""
    if overrides:
        now = SearchSpace.from_dict(stored)
        stored = {**stored, **now.with_overrides(merge_overrides(now.overrides, overrides)).to_dict()}
    return {**stored, **({"workdir": workdir} if workdir is not None else {})}


def _trained_before_precision(store: Store, study: Study) -> bool:
    """Whether the study's first trial was trained by a release before ``train.precision`` (whose resolved
    configs lack the key; it trained in fp32, where the new default ``auto`` would take bf16 on a GPU)."""
    try:
        config = store.get_trial(study, 0).config or {}
    except OIALRSearchError:  # no trial yet
        return False
    return isinstance(config.get("train"), dict) and "precision" not in config["train"]


def job_seed(seed: int, finished: int, running: int, env: Mapping[str, str] = os.environ, *, job: int = 0) -> int:
    """The seed of this job's samplers, in [0, 2³²). ``--seed`` alone would make jobs that run one study at
    once (the tasks of a job array, two submissions of one script, a second allocation) propose the same
    params: ``job``, how many jobs were started on the study before this one (counted in the database,
    so jobs started at the same moment differ), the trials running and finished when it starts and the
    job array task id tell them apart, while the same history gives the same seed (a study's first job
    alone keeps ``--seed`` as given)."""
    task = env.get("SLURM_ARRAY_TASK_ID", "")
    if not running and not task.isdigit() and not job:
        return (seed + finished) % 2**32
    mixed = np.random.SeedSequence([seed % 2**32, finished, running, int(task) + 1 if task.isdigit() else 0, job])
    return int(mixed.generate_state(1)[0])


def _shown(space: SearchSpace, values: list | None) -> str:
    if values is None:
        return ""
    return ", ".join(f"{o.metric}={v:.4g}" if v is not None else f"{o.metric}=?" for o, v in
                     zip(space.objectives, values))


class _Progress:
    """Progress lines: every rank's, one per trial it finished (a sweep missed the trials of every rank but
    the first), each from one GROUP BY and one best query; the header and the summary are rank 0's."""

    def __init__(self, store: Store, study: Study, space: SearchSpace, budget: int) -> None:
        self.store, self.study, self.space, self.budget = store, study, space, budget

    def trial(self, trial: Trial, scored: Scored, seconds: float) -> None:
        counts = self.store.counts(self.study)
        finished = sum(counts.get(s, 0) for s in (COMPLETE, FAILED, PRUNED))
        what = _shown(self.space, scored.values) if scored.state == COMPLETE else scored.state
        if scored.state == FAILED and scored.error:  # why, in short: the whole of it is in 'trials'
            first = scored.error.strip().splitlines()[0] if scored.error.strip() else ""
            what += f" ({first[:117] + '...' if len(first) > 120 else first})" if first else ""
        if scored.state == PRUNED:
            what = f"PRUNED at epoch {scored.stopped_at} ({_shown(self.space, scored.values)})"
        if scored.feasible is False:
            what += " infeasible"
        tail = f"{counts.get(PRUNED, 0)} pruned, " if self.space.pruner.name != "none" else ""
        if len(self.space.objectives) == 1:
            best = self.store.best_trial(self.study, full=False)
            tail += f"{counts.get(FAILED, 0)} failed, " + (f"best {best.value:.4f} (#{best.number})" if best else
                                                          "no best yet")
        else:
            tail += f"{counts.get(FAILED, 0)} failed"
        print(f"[trial {trial.number}] {what} in {seconds:.1f}s | {finished}/{self.budget} finished, {tail}",
              flush=True)

    def done(self) -> None:
        from ._front import pareto_front

        counts = self.store.counts(self.study)
        head = (f"done: {counts.get(COMPLETE, 0)} complete, {counts.get(PRUNED, 0)} pruned, "
                f"{counts.get(FAILED, 0)} failed; ")
        if len(self.space.objectives) == 1:
            best = self.store.best_trial(self.study, full=False)
            print(head + (f"best {self.study.metric} {best.value:.4f} (trial {best.number})" if best else
                          "no completed trial"), flush=True)
            return
        front = pareto_front(self.store, self.study)
        print(head + (f"Pareto front: {len(front)} trial(s) ({', '.join(str(t.number) for t in front)}); see "
                      f"'oialr-search pareto --study {self.study.name}'" if front else
                      "no feasible completed trial, so no Pareto front"), flush=True)


def _stored(ran: Ran | None, trials: Trials) -> object:
    """What the Optuna backend's evaluate returns: (stored trial, scored outcome, metrics); None when
    the rank is done (budget taken, or closed); DROPPED for a run that was not stored."""
    if ran is not None:
        return ran[1:]
    return None if trials.full or trials.closed else DROPPED


def _once(fn: Callable[[], None] | None) -> Callable[[], None]:
    done = []

    def call() -> None:
        if fn is not None and not done:
            done.append(True)
            fn()

    return call


def run_search(req: SearchRequest, *, objective: Objective = run_trial, quiet: bool = False,
               ready: Callable[[], None] | None = None) -> int:
    """Run (or resume) a search on every rank of MPI.COMM_WORLD. Returns the exit code.

    ``objective(space, params, device=, threads=, report=[, group=]) -> TrialOutcome`` trains one
    trial (``group`` only with ``ranks_per_trial`` > 1); the default trains the run config. The
    benchmark injects fixed-cost objectives to measure the service, and ``ready()``, called on every
    rank once the set-up is done (storage, placement, the backend built) and before the first
    proposal, to start its clock where plain Propulate's starts.
    """
    ready = _once(ready)
    comm = _world()
    rank, size = (comm.Get_rank(), comm.Get_size()) if comm is not None else (0, 1)
    prepared, error, code = None, None, 0
    if rank == 0:
        try:
            prepared = _prepare(req, size)
        except OIALRSearchError as exc:
            error, code = str(exc), 2
        except Exception as exc:  # noqa: BLE001 - must reach the other ranks, or they wait forever
            failure = storage_failure(exc, sqlite_file(req.storage))  # a full or read-only disk: the user's to fix
            if failure is not None:
                error, code = f"--storage {req.storage}: {failure}", 2
            else:
                error, code = f"internal error while preparing the study: {type(exc).__name__}: {exc}", 1
    if comm is not None and size > 1:
        prepared, error, code = comm.bcast((prepared, error, code), root=0)
    if error is not None:
        if rank == 0:
            print(f"oialr-search: error: {storage_named(error, req.storage if req.storage_given else None)}",
                  file=sys.stderr)
        return code
    study, backend, budget, finished, space, seed = (prepared.study, prepared.backend, prepared.budget,
                                                     prepared.finished, prepared.space, prepared.seed)
    store = Store(req.storage, create=False)
    placement = place(comm if size > 1 else None)
    try:
        workers = split_workers(comm, req.ranks_per_trial, placement.device)
    except OIALRSearchError as exc:  # raised on every rank alike
        if rank == 0:
            print(f"oialr-search: error: {exc}", file=sys.stderr)
        return 2
    progress = _Progress(store, study, space, budget) if not quiet else None
    if progress and rank == 0:
        objectives = ", ".join(f"{o.direction} {o.metric}" for o in space.objectives)
        ranks = f"{size} rank(s)" if workers.k == 1 else f"{workers.workers} worker(s) of {workers.k} ranks"
        sampler = f" ({space.sampler['type']})" if backend == "optuna" else ""
        print(f"study {study.name!r}: {backend}{sampler} on {ranks}, {finished}/{budget} trials finished, "
              f"objective{'s' if len(space.objectives) > 1 else ''} {objectives}, pruner {space.pruner.name}; "
              f"rank 0 on {placement.device} with {placement.threads} thread(s)", flush=True)
        if space.overrides and not prepared.said_overrides:
            print(f"base config overridden by {_shown_overrides(space.overrides)}", flush=True)

    trials = Trials(store=store, study=study, space=space, objective=objective, placement=placement,
                    workers=workers, rank=rank, folder=trial_folder(req.storage, study.name, prepared.workdir),
                    backend=backend, on_stored=progress.trial if progress else None)
    trials.stop.install()
    try:
        remaining = max(0, budget - finished)
        # the run config's own values: once per study, not once per job that finds no trial finished
        first_job = finished == 0 and prepared.job == 0
        start = [space.start_params()] if first_job and backend != "random" and space.start_params() else []
        try:
            if backend == "propulate":
                folder = propulate_folder(req.storage, study.name, prepared.workdir, comm)
                try:
                    _propulate(comm, rank, store, study, space, folder, workers, trials, budget, remaining, seed, start,
                               ready)
                finally:  # also on Ctrl-C or a preemption: this job's own folder (the next rebuilds from the database)
                    if rank == 0:
                        shutil.rmtree(folder, ignore_errors=True)
            elif workers.leader:
                from ._optuna_backend import run_optuna

                run_space = space if backend == "optuna" else dataclasses.replace(space, sampler={"type": "random"})
                run_optuna(space=run_space, store=store, study=study, seed=seed, rank=workers.worker,
                           evaluate=lambda p: _stored(trials.new(p, None, limit=budget), trials),
                           resume=lambda: trials.resume_dead() is not None, enqueue=start if rank == 0 else (),
                           ready=ready)
            ready()
            if workers.leader:
                trials.drain()
            else:
                trials.follow_to_the_end()
            workers.close(lost=trials.lost)
        finally:
            trials.close()
            store.engine.dispose()  # SQLite folds its WAL into the database file when the last connection closes
        if comm is not None and size > 1:
            idle_barrier(comm)
        if progress and rank == 0:
            progress.done()
        store.engine.dispose()
        return 0
    finally:  # after the closing barrier (see Trials.close)
        trials.stop.restore()


def _propulate(comm, rank: int, store: Store, study: Study, space: SearchSpace, folder: Path,  # noqa: ANN001
               workers: Workers, trials: Trials, budget: int, remaining: int, seed: int, start: list,
               ready: Callable[[], None]) -> None:
    """The Propulate backend's part of run_search, in this job's own folder."""
    from ._propulate_backend import rebuild_checkpoints, run_propulate

    seeded = rebuild_checkpoints(store, study, space, folder, workers.workers) if rank == 0 else None
    if rank == 0 and seeded:
        print(f"propulate: population rebuilt from {seeded} stored trial(s)", flush=True)
    seeded = comm.bcast(seeded, root=0)  # also the barrier: no rank reads the files before they exist
    generations = math.ceil(remaining / workers.workers)
    if not generations:
        return

    def propulate_evaluate(params: dict, island: int | None) -> tuple[dict, Scored] | None:
        if not workers.leader:
            trials.follow()
            return None
        ran = trials.turn(params, island, limit=budget)
        return (ran[0], ran[2]) if ran is not None else None

    run_propulate(comm=comm, space=space, store=store, study=study, folder=folder, generations=generations,
                  seed=seed, evaluate=propulate_evaluate, workers=workers, first=start[0] if start else None,
                  fresh=not seeded, trials=remaining, ready=ready, done=lambda: trials.closed or trials.full)
