"""The search service's overhead, side by side with plain Propulate and Optuna (DESIGN.md §5).

    python bench/search.py [--ranks 8] [--cost 0.5] [--per-rank 8] [--zero-per-rank 40] [--epochs 4]

Launches each mode under the venv's mpiexec with the same ranks and an objective of fixed cost
(sleep), then with a zero-cost objective, and prints:
  - fixed cost: completed evaluations per second as a fraction of ideal (ranks / cost);
  - zero cost: service time per trial (proposal + storage), rank-seconds / trials;
(``--only fixed|zero|storage|sampler`` runs one part, ``--modes`` a subset of the modes)
then storage figures on a 10,000-trial study with realistic rank trajectories: recording one
trial, the ``status``, ``best`` and ``pareto`` verbs (in-process, output discarded), and what the
Propulate backend's surrogate reads of the study (once per job, then after each finished trial, with
an old trial still running, which keeps the reader's watermark at it); and finally
the Optuna samplers' and the Propulate backend's surrogate's own seconds per proposal by the trials
they learn from. service-optuna searches with TPE and service-propulate breeds as plain Propulate
does, so that they measure the service: the default sampler's GP and Propulate's surrogate pick cost
more per proposal, which the last part prints.
The service's objectives report ``--epochs`` epochs per trial (each one stored as it happens), so
the per-epoch writes are part of what is measured.
Modes: ``service-propulate`` and ``service-optuna`` (our runner and store, real SQLite file),
``plain-propulate`` (Propulate's Islands alone), ``optuna-sqlite`` (Optuna workers on one SQLite file).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# TPE, the cheapest model-based sampler, so that service-optuna measures the service; what the default
# sampler's GP costs per proposal is printed apart (--only sampler)
SPACE = """\
base:
  model: {name: mlp}
  data: {name: digits}
sampler: tpe
params:
  oialr.beta: {type: float, low: 0.05, high: 0.5, log: true}
  optim.lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}
  oialr.update_frequency: {type: int, low: 10, high: 200}
  schedule.k_decay: {type: float, low: 0.5, high: 4.0}
"""
MODES = ("service-propulate", "service-optuna", "plain-propulate", "optuna-sqlite")


def _fake_value(params: dict) -> float:
    return sum(float(v) for v in params.values() if isinstance(v, (int, float)))


def worker(mode: str, cost: float, per_rank: int, folder: Path, epochs: int) -> None:
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    url = f"sqlite:///{folder}/{mode}.db"
    setup = None  # the service's set-up time (study, storage, backend), outside the timed region
    trials = per_rank * size
    if mode.startswith("service"):
        from oialr_search.search import SearchRequest, TrialOutcome, load_space, run_search
        from oialr_search.storage import COMPLETE, Store

        space = load_space(folder / "space.yaml")
        import optuna  # noqa: F401  - one-off import costs stay out of the timed region, as for
        import propulate  # noqa: F401  the plain modes

        from oialr_search.search import _surrogate

        # Propulate's own breeding, as plain-propulate's, so that service-propulate measures the service
        # (as service-optuna searches with TPE); what the surrogate's pick costs is printed apart
        _surrogate.CANDIDATES = 1

        def objective(space, params, *, report=None, **_):  # noqa: ANN001, ANN202
            value = _fake_value(params)
            records = [{"epoch": e, "step": e, "train_loss": 1.0, "val_loss": value, "top1": 50.0, "top5": 90.0,
                        "lr": 1e-3, "trainable_fraction": 0.5, "seconds": cost / epochs, "compression": 0.5,
                        "train_seconds": cost * e / epochs} for e in range(1, epochs + 1)]
            for record in records:
                if cost:
                    time.sleep(cost / epochs)
                if report is not None:
                    report(record)
            return TrialOutcome(COMPLETE, {"val_loss": value}, records, [])

        req = SearchRequest(study="bench", storage=url, space=space, backend=mode.split("-")[1], budget=trials)
        clock = []

        def ready() -> None:  # set-up done on every rank: start the clock, as for plain Propulate below
            comm.Barrier()
            clock.append(time.perf_counter())

        comm.Barrier()
        setup = time.perf_counter()
        run_search(req, objective=objective, quiet=True, ready=ready)
        comm.Barrier()
        wall = time.perf_counter() - clock[0]
        setup = clock[0] - setup
        if rank == 0:
            store = Store(url, create=False)
            done = store.count(store.get_study("bench"), (COMPLETE,))
    elif mode == "plain-propulate":
        import contextlib
        import io
        import logging
        import random

        from propulate import Islands
        from propulate.utils import get_default_propagator

        logging.getLogger("propulate").setLevel(logging.WARNING)
        limits = {"a": (0.0, 1.0), "b": (0.0, 1.0), "c": (10, 200), "d": (0.5, 4.0)}
        rng = random.Random(rank)

        def loss(ind) -> float:  # noqa: ANN001
            if cost:
                time.sleep(cost)
            return float(ind["a"] + ind["b"])

        with contextlib.redirect_stdout(io.StringIO()):
            # as the service sets it up: a breeding population of max(8, 2 ranks), islands of two, no
            # migration with one island (Propulate refuses it)
            propagator = get_default_propagator(max(8, 2 * size), limits, rng=rng)
            islands = Islands(loss, propagator, rng, generations=per_rank, num_islands=max(1, size // 2),
                              migration_probability=0.9 if size >= 4 else 0.0, pollination=False,
                              checkpoint_path=folder / "plain")
        comm.Barrier()
        start = time.perf_counter()
        islands.propulate(logging_interval=10**9, debug=0)
        comm.Barrier()
        wall = time.perf_counter() - start
        done = per_rank * size
    else:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        if rank == 0:
            optuna.create_study(storage=url, study_name="bench")
        comm.Barrier()
        study = optuna.load_study(storage=url, study_name="bench")

        def obj(trial) -> float:  # noqa: ANN001
            x = trial.suggest_float("a", 0, 1) + trial.suggest_float("b", 0, 1)
            if cost:
                time.sleep(cost)
            return x

        comm.Barrier()
        start = time.perf_counter()
        study.optimize(obj, n_trials=per_rank)
        comm.Barrier()
        wall = time.perf_counter() - start
        if rank == 0:
            done = len(optuna.load_study(storage=url, study_name="bench").trials)
    if rank == 0:
        print("RESULT " + json.dumps({"mode": mode, "ranks": size, "trials": done, "wall": wall, "setup": setup}),
              flush=True)


def launch(mode: str, ranks: int, cost: float, per_rank: int, folder: Path, epochs: int) -> dict:
    mpiexec = Path(sys.executable).parent / "mpiexec"
    cmd = [str(mpiexec), "-n", str(ranks), sys.executable, "-m", "mpi4py", __file__, "--worker", mode,
           "--cost", str(cost), "--per-rank", str(per_rank), "--folder", str(folder), "--epochs", str(epochs)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    raise RuntimeError(f"{mode} failed (exit {proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")


def _trajectory(kb: int) -> list[dict]:
    """A rank trajectory of about ``kb`` kilobytes: updates of a 24-layer ViT, as the trainer records them."""
    layers = [f"blocks.{b}.{name}" for b in range(6) for name in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")]
    record = {"step": 100, "kind": "update", "ranks": dict.fromkeys(layers, 123), "updated": layers,
              "stability": dict.fromkeys(layers, 0.987654321), "trainable": 123456, "total": 234567,
              "trainable_fraction": 0.123456789, "compression": 0.456789, "seconds": 0.00123}
    size = len(json.dumps(record))
    return [record] * max(1, kb * 1024 // size)


def _timed(fn, reps: int = 10) -> float:  # noqa: ANN001
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):
        fn()  # warm: first-touch costs (imports, the OS page cache) are not what a user waits for twice
        start = time.perf_counter()
        for _ in range(reps):
            fn()
    return (time.perf_counter() - start) / reps * 1e3


def storage_figures(folder: Path, n: int = 10_000, trajectory_kb: int = 100) -> None:
    import random

    from oialr_search.cli import build_parser
    from oialr_search.storage import COMPLETE, PRUNED, Store

    url = f"sqlite:///{folder}/storage.db"
    store = Store(url)
    study = store.create_study(name="big", space={"raw": {}}, space_path="", metric="top1", direction="maximize",
                               backend="optuna", seed=0, budget=n,
                               objectives=[{"metric": "top1", "direction": "maximize"},
                                           {"metric": "trainable_fraction", "direction": "minimize"}])
    trajectory = _trajectory(trajectory_kb)
    config = {"model": {"name": "mini_vit", "kwargs": {"embed_dim": 768}}, "train": {"epochs": 100}}
    rng = random.Random(0)
    # an old trial still running: it pins every reader's watermark (the worst case of the surrogate's read below)
    store.start_trial(study, params={"oialr.beta": 0.1, "optim.lr": 1e-3}, rank=0, island=None, device="cpu")
    start = time.perf_counter()
    for i in range(n):
        t = store.start_trial(study, params={"oialr.beta": rng.uniform(0.05, 0.5), "optim.lr": rng.uniform(1e-4, 1e-2)},
                              rank=0, island=None, device="cpu", config=config)
        top1, tf = rng.uniform(50, 90), rng.uniform(0.05, 1.0)
        pruned = i % 3 == 1
        epochs = [{"epoch": e, "step": 10 * e, "train_loss": 1.0, "val_loss": 1.0, "top1": top1, "top5": 90.0,
                   "lr": 1e-3, "trainable_fraction": tf, "seconds": 1.0, "compression": tf, "train_seconds": e}
                  for e in range(1, 2 if pruned else 11)]
        store.finish_trial(t.id, state=PRUNED if pruned else COMPLETE, value=top1, values=[top1, tf], feasible=True,
                           metrics={"top1": top1, "trainable_fraction": tf, "val_loss": 1.0}, epochs=epochs,
                           rank_trajectory=trajectory)
    record_ms = (time.perf_counter() - start) / n * 1e3
    size_mb = (folder / "storage.db").stat().st_size / 2**20
    print(f"\n== Storage: {n} trials (2 objectives, a third pruned, 10 epochs each, an old one still running), "
          f"{trajectory_kb} KB rank trajectory each ({size_mb:.0f} MB), SQLite WAL")
    print(f"recording a trial (start + finish with its epochs): {record_ms:.2f} ms")
    parser = build_parser()  # the verbs' own arguments, as a user's command line gives them
    for verb, extra in (("status", []), ("best", []), ("pareto", []), ("best", ["--pick", "trainable_fraction<=0.1"])):
        args = parser.parse_args([verb, "--study", "big", "--storage", url, *extra])
        label = " ".join([verb, *extra[:1]])
        print(f"{label:>12}: {_timed(lambda args=args: args.func(args)):7.1f} ms")
    _surrogate_read(folder, store, study)


def _surrogate_read(folder: Path, store, study) -> None:  # noqa: ANN001
    """What the Propulate backend's surrogate reads before each proposal (search/_study_points.py): the
    whole study once per job, then what finished since, with the study rescored (NSGA-II order here)."""
    from oialr_search.search import load_space
    from oialr_search.search._propulate_backend import study_points
    from oialr_search.storage import COMPLETE

    (folder / "surrogate.yaml").write_text(
        SPACE.split("params:")[0] + "objectives: [{metric: top1, direction: maximize}, {metric: trainable_fraction}]\n"
        "params:\n  oialr.beta: {type: float, low: 0.05, high: 0.5}\n"
        "  optim.lr: {type: float, low: 1.0e-4, high: 1.0e-2}\n")
    points = study_points(store, study, load_space(folder / "surrogate.yaml"))
    start = time.perf_counter()
    points.points()
    first = time.perf_counter() - start
    t = store.start_trial(study, params={"oialr.beta": 0.2, "optim.lr": 1e-3}, rank=1, island=None, device="cpu")
    store.finish_trial(t.id, state=COMPLETE, value=70.0, values=[70.0, 0.5], feasible=True,
                       metrics={"top1": 70.0, "trainable_fraction": 0.5, "val_loss": 1.0})
    start = time.perf_counter()
    points.points()
    one_new = time.perf_counter() - start
    print(f"surrogate's study read: {first * 1e3:.1f} ms once per job, then {one_new * 1e3:.1f} ms per proposal "
          f"after one more trial finished (an old trial still running)")


def sampler_figures(counts: tuple[int, ...], reps: int = 3) -> None:
    """Seconds per proposal of the Optuna backend's model-based samplers by the completed trials they
    learn from, on the demo space's ten dimensions (search_spaces/mnist_quick.yaml), one thread."""
    import random

    import optuna
    import torch

    from oialr_search.search import load_space
    from oialr_search.search._optuna_backend import _distribution
    from oialr_search.search._samplers import make_sampler

    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = load_space(Path(__file__).resolve().parents[1] / "search_spaces" / "mnist_quick.yaml")
    dists = {d.key: _distribution(d) for d in space.dimensions}
    rng = random.Random(0)

    def draw(d) -> float | int:  # noqa: ANN001 - uniform over the dimension's own (log) scale
        lo, hi = (math.log(d.low), math.log(d.high)) if d.log else (d.low, d.high)
        x = rng.uniform(lo, hi)
        x = math.exp(x) if d.log else x
        return min(d.high, max(d.low, round(x))) if isinstance(d, optuna.distributions.IntDistribution) else x

    def propose(study) -> None:  # noqa: ANN001
        trial = study.ask(dists)
        study.tell(trial, _fake_value(trial.params))

    print("\n== The Optuna sampler's own cost: seconds per proposal by completed trials learned from "
          "(10 dimensions, one thread)")
    print(f"{'sampler':>10} " + " ".join(f"{n:>7d}" for n in counts))
    for kind in ("gp", "tpe"):
        study = optuna.create_study(sampler=make_sampler({"type": kind}, 0))
        row = []
        for n in counts:
            while len(study.trials) < n:
                params = {k: draw(d) for k, d in dists.items()}
                study.add_trial(optuna.trial.create_trial(params=params, distributions=dists,
                                                          value=_fake_value(params)))
            propose(study)  # untimed: the first proposal pays one-off costs
            start = time.perf_counter()
            for _ in range(reps):
                propose(study)
            row.append((time.perf_counter() - start) / reps)
        print(f"{kind:>10} " + " ".join(f"{t:7.3f}" for t in row), flush=True)
    print(f"{'propulate':>10} " + " ".join(f"{surrogate_pick_seconds(space, n, reps):7.3f}" for n in counts)
          + "   (the Propulate backend's surrogate pick of 16 children)", flush=True)


def surrogate_pick_seconds(space, n: int, reps: int) -> float:  # noqa: ANN001
    """Seconds per proposal of the Propulate backend's surrogate pick with ``n`` evaluated individuals."""
    import random

    from propulate.population import Individual

    from oialr_search.search._propulate_backend import limits_of
    from oialr_search.search._selection import default_breeding
    from oialr_search.search._surrogate import SurrogatePick

    rng = random.Random(0)
    limits = limits_of(space)

    def individual() -> Individual:
        ind = Individual({k: type(lo)(rng.uniform(lo, hi)) for k, (lo, hi) in limits.items()}, limits)
        ind.loss = _fake_value({k: float(v) for k, v in ind.items()})
        ind.active = True
        return ind

    population = [individual() for _ in range(n)]
    pick = SurrogatePick(default_breeding(limits, pop_size=8, rng=rng, sigma_factor=0.15), limits, rng=rng)
    pick(population)  # untimed: the first pays one-off costs (imports)
    start = time.perf_counter()
    for _ in range(reps):
        pick(population)
    return (time.perf_counter() - start) / reps


def fixed(args: argparse.Namespace, folder: Path) -> None:
    print(f"== Fixed-cost evaluations: {args.cost}s each, {args.ranks} ranks, {args.per_rank} per rank")
    print(f"{'mode':>18} {'trials':>7} {'wall s':>8} {'efficiency':>11} {'set-up s (untimed)':>19}")
    for mode in args.modes:
        r = launch(mode, args.ranks, args.cost, args.per_rank, folder / f"fixed-{mode}", args.epochs)
        eff = r["trials"] * args.cost / (args.ranks * r["wall"])
        setup = f"{r['setup']:.2f}" if r["setup"] is not None else "-"
        print(f"{mode:>18} {r['trials']:7d} {r['wall']:8.2f} {eff:10.1%} {setup:>19}", flush=True)


def zero(args: argparse.Namespace, folder: Path) -> None:
    print(f"\n== Zero-cost evaluations: {args.ranks} ranks, {args.zero_per_rank} per rank")
    print(f"{'mode':>18} {'trials':>7} {'wall s':>8} {'ms/trial':>9}")
    for mode in args.modes:
        r = launch(mode, args.ranks, 0.0, args.zero_per_rank, folder / f"zero-{mode}", args.epochs)
        per = args.ranks * r["wall"] / max(1, r["trials"]) * 1e3
        print(f"{mode:>18} {r['trials']:7d} {r['wall']:8.2f} {per:9.1f}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--worker", choices=MODES)
    ap.add_argument("--folder", type=Path)
    ap.add_argument("--ranks", type=int, default=8)
    ap.add_argument("--cost", type=float, default=0.5)
    ap.add_argument("--per-rank", type=int, default=8)
    ap.add_argument("--zero-per-rank", type=int, default=40)
    ap.add_argument("--epochs", type=int, default=4, help="epochs each service trial reports")
    ap.add_argument("--storage-trials", type=int, default=10_000)
    ap.add_argument("--trajectory-kb", type=int, default=100)
    ap.add_argument("--sampler-trials", type=int, nargs="+", default=[25, 50, 100, 200],
                    help="completed trials at which the samplers' proposals are timed")
    ap.add_argument("--only", choices=("fixed", "zero", "storage", "sampler"), help="run one part only")
    ap.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    args = ap.parse_args()
    if args.worker:
        worker(args.worker, args.cost, args.per_rank, args.folder, args.epochs)
        return
    if args.only == "storage":
        with tempfile.TemporaryDirectory() as tmp:
            storage_figures(Path(tmp), args.storage_trials, args.trajectory_kb)
        return
    if args.only == "sampler":
        sampler_figures(tuple(args.sampler_trials))
        return
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for mode in MODES:
            for kind in ("fixed", "zero"):
                (folder / f"{kind}-{mode}").mkdir()
                (folder / f"{kind}-{mode}" / "space.yaml").write_text(SPACE)
        if args.only in (None, "fixed"):
            fixed(args, folder)
        if args.only in (None, "zero"):
            zero(args, folder)
        if args.only is None:
            storage_figures(folder, args.storage_trials, args.trajectory_kb)
            sampler_figures(tuple(args.sampler_trials))


if __name__ == "__main__":
    main()
