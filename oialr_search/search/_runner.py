"""Running a search: storage set-up on rank 0, placement, the backend loop, progress output."""

from __future__ import annotations

import contextlib
import dataclasses
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.engine import make_url

from ..exceptions import ConfigError, OIALRSearchError
from ..storage import COMPLETE, FAILED, PRUNED, Store, Study, Trial
from ._devices import place
from ._objective import TrialOutcome, run_trial
from ._objectives import Scored, score
from ._reporter import EpochReporter
from ._space import SearchSpace

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


def checkpoint_folder(storage: str, study: str) -> Path:
    """Propulate's per-study folder: next to a SQLite file, else in the working directory."""
    url = make_url(storage)
    if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
        db = Path(url.database)
        return db.with_name(f"{db.stem}.propulate") / study
    return Path("oialr_search_checkpoints") / study


def _prepare(req: SearchRequest, world_size: int) -> tuple[Study, str, int, int, SearchSpace]:
    """Rank 0: open storage, create or load the study, mark interrupted trials, pick the backend."""
    store = Store(req.storage)
    existing = store.find_study(req.study)
    if req.space is None:
        existing = existing or store.get_study(req.study)  # raises StudyNotFound with the known names
        space = SearchSpace.from_dict(existing.space)
    else:
        space = req.space
        if existing is not None and existing.space.get("raw") != space.to_dict()["raw"]:
            raise OIALRSearchError(f"study {req.study!r} already exists with a different search space; "
                                   f"continue it with 'oialr-search resume --study {req.study}' or pick a new name")
    wanted = req.backend if req.backend != "auto" else (existing.backend if existing else "propulate")
    backend = wanted
    if backend == "propulate" and (world_size < 2 or not propulate_available()):
        why = "one process (launch with mpiexec -n 2 or more)" if world_size < 2 else "propulate is not importable"
        print(f"backend: Propulate cannot run here ({why}); using the Optuna fallback", flush=True)
        backend = "optuna"
    if existing is None:
        study = store.create_study(name=req.study, space=space.to_dict(), space_path=space.path, metric=space.metric,
                                   direction=space.direction, backend=wanted, seed=req.seed,
                                   budget=req.budget or DEFAULT_BUDGET,
                                   objectives=[o.to_dict() for o in space.objectives],
                                   constraints={c.metric: c.to_dict() for c in space.constraints})
    else:
        study = existing
    budget = req.budget or study.budget
    if budget != study.budget:
        store.update_study(req.study, budget=budget)
    interrupted = store.mark_interrupted(study)
    if interrupted:
        print(f"resume: marked {interrupted} trial(s) of the previous job as INTERRUPTED", flush=True)
    finished = store.count(study, (COMPLETE, FAILED, PRUNED))
    return study, backend, budget, finished, space


def _shown(space: SearchSpace, values: list | None) -> str:
    if values is None:
        return ""
    return ", ".join(f"{o.metric}={v:.4g}" if v is not None else f"{o.metric}=?" for o, v in
                     zip(space.objectives, values))


class _Progress:
    """Rank 0's progress lines: one per trial it finished, from one GROUP BY and one best query."""

    def __init__(self, store: Store, study: Study, space: SearchSpace, budget: int) -> None:
        self.store, self.study, self.space, self.budget = store, study, space, budget

    def trial(self, trial: Trial, scored: Scored, seconds: float, pruned_at: int | None) -> None:
        counts = self.store.counts(self.study)
        finished = sum(counts.get(s, 0) for s in (COMPLETE, FAILED, PRUNED))
        what = _shown(self.space, scored.values) if scored.state == COMPLETE else scored.state
        if scored.state == PRUNED:
            what = f"PRUNED at epoch {pruned_at} ({_shown(self.space, scored.values)})"
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
        print(head + f"Pareto front: {len(front)} trial(s) "
              f"({', '.join(str(t.number) for t in front)}); see 'oialr-search pareto --study {self.study.name}'",
              flush=True)


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

    ``objective(space, params, device=, threads=, report=) -> TrialOutcome`` trains one trial; the
    default trains the run config. The benchmark injects fixed-cost objectives to measure the service,
    and ``ready()``, called on every rank once the set-up is done (storage, placement, the backend
    built) and before the first proposal, to start its clock where plain Propulate's starts.
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
            error, code = f"internal error while preparing the study: {type(exc).__name__}: {exc}", 1
    if comm is not None and size > 1:
        prepared, error, code = comm.bcast((prepared, error, code), root=0)
    if error is not None:
        if rank == 0:
            print(f"oialr-search: error: {error}", file=sys.stderr)
        return code
    study, backend, budget, finished, space = prepared
    store = Store(req.storage, create=False)
    placement = place(comm if size > 1 else None)
    progress = _Progress(store, study, space, budget) if rank == 0 and not quiet else None
    if progress:
        objectives = ", ".join(f"{o.direction} {o.metric}" for o in space.objectives)
        print(f"study {study.name!r}: {backend} on {size} rank(s), {finished}/{budget} trials finished, "
              f"objective{'s' if len(space.objectives) > 1 else ''} {objectives}, pruner {space.pruner.name}; "
              f"rank 0 on {placement.device} with {placement.threads} thread(s)", flush=True)

    def evaluate(params: dict, island: int | None, limit: int | None = None) -> tuple[Trial, Scored, dict] | None:
        """Claim a slot, train (reporting every epoch), store; None once ``limit`` trials exist."""
        try:
            config = space.trial_config(params, threads=placement.threads)
        except ConfigError:
            config = None  # an invalid combination: run_trial stores the trial FAILED with the reason
        trial = store.start_trial(study, params=params, rank=rank, island=island, device=placement.device,
                                  config=config, limit=limit)
        if trial is None:
            return None
        reporter = EpochReporter(store=store, study=study, trial_id=trial.id, objectives=space.objectives,
                                 pruner=space.pruner, max_epochs=(config or {}).get("train", {}).get("epochs", 0))
        try:
            outcome = objective(space, params, device=placement.device, threads=placement.threads, report=reporter)
        except BaseException:  # interrupted: keep the epochs it reached
            with contextlib.suppress(Exception):
                reporter.flush()
            raise
        scored = score(outcome.state, outcome.metrics, outcome.error, space.objectives, space.constraints)
        values = scored.values
        try:
            store.finish_trial(trial.id, state=scored.state, value=values[0] if values else None, values=values,
                               feasible=scored.feasible, metrics=outcome.metrics,
                               epochs=outcome.epochs or reporter.pending,  # a failed trial keeps what it reported
                               rank_trajectory=outcome.trajectory, error=scored.error)
        except RuntimeError as exc:  # the outcome cannot be stored as it is: never leave the trial RUNNING
            scored = Scored(FAILED, None, None, f"storing the outcome failed: {exc}")
            store.finish_trial(trial.id, state=FAILED, error=scored.error)
        if progress:
            progress.trial(trial, scored, outcome.seconds, reporter.pruned_at)
        return trial, scored, outcome.metrics

    remaining = max(0, budget - finished)
    start = [space.start_params()] if finished == 0 and backend != "random" and space.start_params() else []
    if backend == "propulate":
        from ._propulate_backend import rebuild_checkpoints, run_propulate

        folder = checkpoint_folder(req.storage, study.name)
        if rank == 0:
            seeded = rebuild_checkpoints(store, study, space, folder, size)
            if seeded:
                print(f"propulate: population rebuilt from {seeded} stored trial(s)", flush=True)
        comm.Barrier()
        generations = math.ceil(remaining / size)
        if generations:
            run_propulate(comm=comm, space=space, store=store, study=study, folder=folder, generations=generations,
                          seed=req.seed + finished, evaluate=lambda p, isl: evaluate(p, isl)[1],
                          first=start[0] if start and rank == 0 else None, ready=ready)
    else:
        from ._optuna_backend import run_optuna

        run_space = space if backend == "optuna" else dataclasses.replace(space, sampler={"type": "random"})
        run_optuna(space=run_space, store=store, study=study, seed=req.seed + finished, rank=rank,
                   evaluate=lambda p: evaluate(p, None, limit=budget), enqueue=start if rank == 0 else (),
                   ready=ready)
    ready()  # on ranks that had nothing left to run
    if comm is not None and size > 1:
        comm.Barrier()
    if progress:
        progress.done()
    return 0
