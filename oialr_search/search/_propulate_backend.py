"""Propulate backend: asynchronous evolutionary search with islands over MPI.

Guards for Propulate 1.2.2 (DESIGN.md §4): the objectives are minimized (maximized metrics are
negated), and several are ranked in NSGA-II's order before every breeding (see ``_scalarization``);
float limits are always float tuples, log scales are searched in log10 space and categoricals as
int indices (see ``Dimension``); the loss function never raises and maps NaN and
failures to +inf; islands have at least two workers (MPICH hangs a single-worker island at its
checkpoint); ``summarize()`` is never called. Propulate's own checkpoints (one non-atomic pickle per
island, not recoverable when truncated, crashing when the rank count changes) are never trusted on
start, nor written: before every run rank 0 rebuilds each island's population from the database, which holds
every completed trial, so resuming after a crash or with another rank count just works.

Early stopping does not use Propulate's own mechanism (a generator loss function and a surrogate
whose ``cancel()`` stops the run): its surrogate sees only what its island synchronized, not the
trials of other islands and earlier jobs, and the same rule must hold under the Optuna backend. The
trial's epochs are judged by the study's pruner inside the loss function (``EpochReporter``), and a
pruned trial comes back to Propulate ranked by its projection to the end of training (``_projection``).
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import pickle
import random
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..storage import COMPLETE, PRUNED, Store, Study
from ._design import DesignInit, anchor, sliced_latin_hypercube
from ._objective import while_interrupted
from ._objectives import Scored, minimize_sense, objectives_from
from ._projection import ranked_as
from ._scalarization import RescoringPropagator, attach
from ._space import SearchSpace
from ._study_points import StudyPoints
from ._surrogate import MAX_POINTS, SurrogatePick
from ._workers import Workers

# (params, island) -> (the params that ran, the stored outcome); None when nothing was stored (a follower
# rank of a multi-rank trial, the budget was full, or the rank is closed). The params differ from those
# proposed when the rank resumed a trial of a dead job instead.
RunTrial = Callable[[dict, int | None], tuple[dict, Scored] | None]


def island_sizes(workers: int) -> list[int]:
    """As many islands as keeps every island at two or more workers (Propulate's split)."""
    islands = max(1, workers // 2)
    base, extra = divmod(workers, islands)
    return [base + (1 if i < extra else 0) for i in range(islands)]


def design_size(pop_size: int, sizes: list[int], trials: int) -> int:
    """Points per island of a fresh search's design: one breeding population in all, shared out among the
    islands (the surrogate sees every island's trials, and picks among uniform draws once a worker's
    share is run), or the smallest island's share of the ``trials`` if fewer, so every point is run."""
    return max(1, min(-(-pop_size // len(sizes)), trials * min(sizes) // sum(sizes)))


def island_of(rank: int, sizes: list[int]) -> tuple[int, int]:
    """(island index, rank within the island) of a world rank."""
    start = 0
    for idx, size in enumerate(sizes):
        if rank < start + size:
            return idx, rank - start
        start += size
    raise ValueError(f"rank {rank} outside {sum(sizes)} workers")


def limits_of(space: SearchSpace) -> dict[str, tuple]:
    return {f"p{i}": d.propulate_limits() for i, d in enumerate(space.dimensions)}


def decode(space: SearchSpace, individual) -> dict:  # noqa: ANN001
    return {d.key: d.decode(individual[f"p{i}"]) for i, d in enumerate(space.dimensions)}


def rebuild_checkpoints(store: Store, study: Study, space: SearchSpace, folder: Path, workers: int) -> int:
    """Write each island's population from the stored COMPLETE trials; returns how many.

    Every worker of an island gets at least one individual (Propulate takes the next generation
    from its own individuals), all at generation -1, so each continues from generation 0 with the
    remaining budget.
    """
    from propulate.population import Individual

    folder.mkdir(parents=True, exist_ok=True)
    for old in list(folder.glob("island_*_ckpt.pickle")) + list(folder.glob("island_*_ckpt.bkp")):
        old.unlink()
    objectives = objectives_from(study.objectives)
    trials = [t for t in store.trials(study, states=(COMPLETE, PRUNED))
              if t.values is not None and len(t.values) == len(objectives)
              and all(v is not None and math.isfinite(v) for v in t.values)]
    if not any(t.state == COMPLETE for t in trials):
        return 0
    limits = limits_of(space)
    sizes = island_sizes(workers)
    offsets: dict = {}  # stop epoch -> the projection's offsets, read once
    working = {t.id: ranked_as(store, study, space, minimize_sense(t.values, objectives), t.state, t.feasible,
                               t.last_epoch, cache=offsets) for t in trials}
    populations = []
    for idx, size in enumerate(sizes):
        population = []
        for k in range(max(len(trials), size)):
            t = trials[k % len(trials)]
            try:
                position = _traits(space, limits, t.params)
            except (KeyError, ValueError):
                continue  # a trial from an older version of the space
            ind = Individual(position, limits, generation=-1, rank=k % size)
            ind.loss = attach(ind, *working[t.id])
            ind.active, ind.island, ind.current = True, idx, k % size
            ind.migration_steps, ind.migration_history = 0, str(idx)
            ind.evaltime, ind.evalperiod = time.time(), float(t.duration or 0.0)
            population.append(ind)
        if len({ind.rank for ind in population}) < size:
            return 0  # not enough usable trials for every worker: every island starts fresh (nothing written)
        populations.append(population)
    for idx, population in enumerate(populations):
        tmp = folder / f".island_{idx}_ckpt.tmp"
        tmp.write_bytes(pickle.dumps(population))
        tmp.replace(folder / f"island_{idx}_ckpt.pickle")
    return len(trials)


def _traits(space: SearchSpace, limits: dict, params: dict) -> dict:
    """``params`` in Propulate's encoding (the inverse of :func:`decode`)."""
    return {f"p{i}": type(limits[f"p{i}"][0])(d.encode(params[d.key])) for i, d in enumerate(space.dimensions)}


def study_points(store: Store, study: Study, space: SearchSpace) -> StudyPoints:
    """The whole study as the surrogate's data (see _study_points), in this backend's traits."""
    limits = limits_of(space)
    return StudyPoints(store=store, study=study, space=space, encode=lambda params: _traits(space, limits, params),
                       keep=MAX_POINTS)


def _set_traits(individual, space: SearchSpace, limits: dict, params: dict) -> None:  # noqa: ANN001
    for key, value in _traits(space, limits, params).items():  # key by key: Propulate's Individual.update raises
        individual[key] = value


def _skip_checkpoints(propulator) -> None:  # noqa: ANN001
    """Propulate pickles its island's whole population after every generation of one worker in turn, only
    to resume from it; we never read those files (``rebuild_checkpoints`` restores every island from the
    database), and the pickle grows with the study: at 8 ranks it was a third of Propulate's own time per
    trial. Without its token the turn never passes on, so no message is left unreceived."""
    assert hasattr(propulator, "_dump_checkpoint") and hasattr(propulator, "_dump_final_checkpoint"), \
        "Propulate renamed its checkpoint methods: update _skip_checkpoints"
    propulator._dump_checkpoint = lambda: None
    propulator._dump_final_checkpoint = lambda: None


def run_propulate(*, comm, space: SearchSpace, store: Store, study: Study, folder: Path, generations: int,  # noqa: ANN001
                  seed: int, evaluate: RunTrial, workers: Workers | None = None, first: dict | None = None,
                  trials: int, fresh: bool = False, ready: Callable[[], None] | None = None,
                  done: Callable[[], bool] | None = None) -> None:
    """Run this rank's share (``generations`` evaluations) of the search. Collective.

    ``workers``: the ranks in groups that train one trial each (Propulate's ``ranks_per_worker``);
    the islands are made of workers. ``first``: the run config's own values (the same on every rank),
    which rank 0 evaluates instead of its first proposal, so a fresh search starts from a known-good
    point. ``fresh``: no island was rebuilt from stored trials, so the islands' first trials come from
    one sliced Latin hypercube (see _design) instead of uniform draws.
    ``trials``: how many trials this job runs in all. ``done()``: this rank takes no more trials (its
    remaining generations' proposals are bred without the surrogate's model).
    """
    from propulate import Islands
    from propulate.propagators import SelectMin, SelectUniform

    from ._selection import default_breeding

    logging.getLogger("propulate").setLevel(logging.WARNING)
    worker, n_workers, k = (workers.worker, workers.workers, workers.k) if workers else \
        (comm.Get_rank(), comm.Get_size(), 1)
    sizes = island_sizes(n_workers)
    island, local = island_of(worker, sizes)
    rng = random.Random(seed * 7919 + worker)
    np.random.seed((seed * 7919 + worker) % 2**32)
    limits = limits_of(space)
    # Propulate's own defaults (a breeding population of 4 at 2 workers, mutation sigma 5% of a range) spent
    # budgets of tens of trials recombining the first few random ones, one or two traits at a time: with
    # 8 and 15% the front's hypervolume at 24 trials went from 0.83 ± 0.14 to 0.90 ± 0.07 and the best
    # got better too (bench/search_quality.py --task digits, 15 seeds; see the README)
    pop_size = max(8, 2 * n_workers)  # on a fresh search the first pop_size, in all islands, come from a design
    breeding = default_breeding(limits, pop_size=pop_size, rng=rng, sigma_factor=0.15)  # see _selection
    init = None
    if fresh:
        design = sliced_latin_hypercube(limits, design_size(pop_size, sizes, trials), len(sizes), seed)
        if first:
            anchor(design, limits, _traits(space, limits, first))
        init = breeding.false_prop = DesignInit(design[island][local::sizes[island]], limits, breeding.false_prop)
    # each evaluation runs the most promising of several bred children, by a model of the whole study's trials
    # (_surrogate, _study_points)
    picking = SurrogatePick(breeding, limits, rng=random.Random(seed * 7919 + worker + 104729), idle=done,
                            history=study_points(store, study, space).points,
                            design_left=lambda: init is not None and bool(init.points))
    propagator = RescoringPropagator(picking, n_objectives=len(space.objectives), pop_size=pop_size)

    pending = [first] if first and comm.Get_rank() == 0 else []

    def loss_fn(individual, _worker_comm=None) -> float:  # noqa: ANN001 - Propulate passes it when k > 1
        try:
            if pending:
                _set_traits(individual, space, limits, pending.pop())
            proposed = decode(space, individual)
            result = evaluate(proposed, island)
            if result is None:
                return attach(individual, None, "FAILED")
            params, scored = result
            if params != proposed:  # a resumed trial of a dead job ran instead: the individual becomes it
                with contextlib.suppress(KeyError, ValueError):  # a trial from an older version of the space
                    _set_traits(individual, space, limits, params)
            return attach(individual, *ranked_as(store, study, space, scored.minimized(space.objectives),
                                                 scored.state, scored.feasible, scored.stopped_at))
        except (KeyboardInterrupt, SystemExit):
            # Ctrl-C ends the whole search, not this one trial (which stays RUNNING for the next job): the CLI
            # exits 130 and ends the other ranks with this one (MPI_Abort), so none is left waiting
            raise
        except BaseException as exc:  # noqa: BLE001 - an exception here would hang the other ranks
            from ..storage._sqlite import storage_failure  # here: this clause is all that handles it

            if while_interrupted(exc):  # Ctrl-C that a library turned into its own error
                raise KeyboardInterrupt from exc

            if storage_failure(exc) is not None:  # a full or read-only disk: every later trial would be lost too,
                raise  # so end the search; the CLI says what is wrong (exit 2) and ends the other ranks
            print(f"[rank {comm.Get_rank()}] trial bookkeeping failed: {type(exc).__name__}: {exc}", flush=True)
            return attach(individual, None, "FAILED")

    with contextlib.redirect_stdout(io.StringIO()):  # Propulate prints a banner
        islands = Islands(loss_fn, propagator, rng, generations=generations, num_islands=len(sizes),
                          island_sizes=np.array(sizes), migration_probability=0.9 if len(sizes) > 1 else 0.0,
                          pollination=False, checkpoint_path=folder, ranks_per_worker=k,
                          # emigrants chosen by the working loss would be the best on the first objective
                          # only, stripping each island of one end of its front
                          emigration_propagator=SelectMin if len(space.objectives) == 1 else SelectUniform)
    _skip_checkpoints(islands.propulator)
    # every island has read its population: the files go (they hold a copy of the whole study per island), so
    # a job killed outright (SIGKILL, a lost node), whose folder is never removed, leaves no copy behind
    comm.Barrier()
    if comm.Get_rank() == 0:
        for path in folder.glob("island_*_ckpt.*"):
            path.unlink(missing_ok=True)
    if ready is not None:
        ready()
    islands.propulate(logging_interval=10**9, debug=0)

