"""Search quality: do the backends beat random search, and what does early stopping save?

    python bench/search_quality.py [--task mnist|digits] [--seeds 3] [--budgets 24 48] [--ranks 2]
                                   [--parts abc] [--backends ...] [--epochs N] [--min-epochs 1]
                                   [--reduction 3] [--sampler auto|gp|tpe|nsga2|random]

Every search is a real ``oialr-search run`` under the venv's mpiexec (``--ranks`` ranks), on a space
built from ``search_spaces/mnist_quick.yaml`` (``--task mnist``: the mini-ViT on embedded MNIST, ~14 s
a trial on one core) or the same OIALR/lr dimensions on an MLP over sklearn's digits (``--task
digits``, ~1 s a trial). Prints mean ± sd over seeds of:

  (a) the best val_loss for Propulate, Optuna (the space's sampler, ``--sampler`` to pick another) and
      random search, at each budget;
  (b) the hypervolume of the (top1 ↑, trainable_fraction ↓) front, normalized to [0, 1] with the
      reference point (top1 0, trainable_fraction 1), for the same three;
  (c) with and without ASHA (``--min-epochs``, ``--reduction``; default 1 and 3) at equal trial
      count (Propulate; ``--pruning-backend`` picks another): training epochs spent, the best
      val_loss reached, and the best val_loss of the unpruned search once it had spent as many
      epochs as the pruned one (trials counted in the order they finished); and, over the unpruned
      searches' trials, how well each epoch's val_loss ranks the trials by their final val_loss
      (Spearman's rho): a rung prunes well only where it is high.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

BACKENDS = ("propulate", "optuna", "random")
DIGITS_BASE = {
    "model": {"name": "mlp", "kwargs": {"hidden": 128, "depth": 2}},
    "data": {"name": "digits", "val_fraction": 0.2},
    "oialr": {"keep_last_layer": False},
    "train": {"epochs": 9, "batch_size": 64},
}


def make_space(folder: Path, task: str, *, objectives: list[dict], pruner: dict | None, name: str,
               epochs: int | None = None, sampler: str | None = None) -> Path:
    space = yaml.safe_load((ROOT / "search_spaces" / "mnist_quick.yaml").read_text())
    space.pop("objective", None)
    space.pop("description", None)
    if task == "digits":
        space.pop("set", None)
        space["base"] = DIGITS_BASE
    else:
        space["base"] = str(ROOT / "oialr_search" / "configs" / "mnist_vit.yaml")
    space["objectives"] = objectives
    if epochs:
        space.setdefault("set", {})["train.epochs"] = epochs
    if pruner:
        space["pruner"] = pruner
    if sampler:
        space["sampler"] = sampler
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(space, sort_keys=False))
    return path


def search(space: Path, folder: Path, study: str, backend: str, seed: int, budget: int, ranks: int) -> str:
    url = f"sqlite:///{folder}/quality.db"
    mpiexec = Path(sys.executable).parent / "mpiexec"
    cmd = [str(mpiexec), "-n", str(ranks), sys.executable, "-m", "mpi4py", "-m", "oialr_search", "run", str(space),
           "--study", study, "--storage", url, "--backend", backend, "--seed", str(seed), "--budget", str(budget)]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=7200, cwd=folder,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "OIALR_SEARCH_STORAGE": ""})
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    print(f"    {study}: {time.perf_counter() - start:.0f}s", file=sys.stderr, flush=True)
    return url


def _trials(url: str, study: str):  # noqa: ANN202
    from oialr_search.storage import Store

    store = Store(url, create=False, read_only=True)
    s = store.get_study(study)
    return store, s, store.trials(s)


def best_value(url: str, study: str) -> float:
    store, s, _ = _trials(url, study)
    return store.best_trial(s, full=False).value


def normalized_hypervolume(url: str, study: str) -> float:
    from oialr_search.search import hypervolume, pareto_front

    store, s, _ = _trials(url, study)
    points = [(1 - t.values[0] / 100, t.values[1]) for t in pareto_front(store, s)]
    return hypervolume(points, (1.0, 1.0))


def epochs_and_curve(url: str, study: str) -> tuple[int, list[tuple[int, float | None]]]:
    """Epochs spent, and (epochs spent so far, value if COMPLETE) per trial in finishing order."""
    _, _, trials = _trials(url, study)
    spent, curve = 0, []
    for t in sorted(trials, key=lambda t: t.finished):
        spent += t.last_epoch or 0
        curve.append((spent, t.value if t.state == "COMPLETE" else None))
    return spent, curve


def curves(url: str, study: str) -> list[dict[int, float]]:
    """val_loss by epoch of each completed trial."""
    store, s, trials = _trials(url, study)
    by_id = store.study_epochs(s)
    done = {t.id for t in trials if t.state == "COMPLETE"}
    return [{e["epoch"]: e["val_loss"] for e in by_id.get(i, []) if e["val_loss"] is not None} for i in done]


def rank_correlations(runs: list[dict[int, float]]) -> dict[int, tuple[float, int]]:
    """Per epoch, Spearman's rho of the val_loss then and at the trial's own last epoch, over the trials
    that went on past it (and how many): how well a rung at that epoch ranks trials by their final value."""
    from scipy.stats import spearmanr

    out = {}
    for epoch in range(1, max((max(r) for r in runs if r), default=0)):
        pairs = [(r[epoch], r[max(r)]) for r in runs if epoch in r and max(r) > epoch]
        if len(pairs) > 2:
            out[epoch] = (float(spearmanr(*zip(*pairs))[0]), len(pairs))
    return out


def fmt(xs: list[float]) -> str:
    return f"{statistics.mean(xs):.4f} ± {statistics.stdev(xs) if len(xs) > 1 else 0.0:.4f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", choices=("mnist", "digits"), default="mnist")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--budgets", type=int, nargs="+", default=[24, 48])
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--parts", default="abc", help="which parts to run: any of a, b, c")
    ap.add_argument("--backends", nargs="+", choices=BACKENDS, default=list(BACKENDS), help="parts a and b")
    ap.add_argument("--pruning-backend", choices=BACKENDS, default="propulate", help="part c's backend")
    ap.add_argument("--epochs", type=int, default=None, help="epochs per trial (default: the space's, 4 for mnist)")
    ap.add_argument("--min-epochs", type=int, default=1, help="ASHA's first rung, part (c)")
    ap.add_argument("--reduction", type=int, default=3, help="ASHA's reduction factor, part (c)")
    ap.add_argument("--sampler", default=None, help="the Optuna backend's sampler (default: the space's, auto)")
    ap.add_argument("--keep", type=Path, default=None, help="keep the databases in this folder")
    args = ap.parse_args()
    folder = args.keep or Path(tempfile.mkdtemp(prefix="oialr-quality-"))
    folder.mkdir(parents=True, exist_ok=True)
    single = make_space(folder, args.task, objectives=[{"metric": "val_loss"}], pruner=None, name="single",
                        epochs=args.epochs, sampler=args.sampler)
    front = make_space(folder, args.task, objectives=[{"metric": "top1"}, {"metric": "trainable_fraction"}],
                       pruner=None, name="front", epochs=args.epochs, sampler=args.sampler)
    asha = make_space(folder, args.task, objectives=[{"metric": "val_loss"}], name="asha", epochs=args.epochs,
                      pruner={"type": "asha", "min_epochs": args.min_epochs, "reduction": args.reduction},
                      sampler=args.sampler)
    seeds = range(args.seeds)
    print(f"== task {args.task}, {args.ranks} ranks, seeds {list(seeds)}, budgets {args.budgets} ({folder})")
    if "a" in args.parts:
        print("\n(a) best val_loss (lower is better), mean ± sd over seeds")
        for budget in args.budgets:
            for backend in args.backends:
                values = [best_value(search(single, folder, f"a-{backend}-{budget}-{s}", backend, s, budget,
                                            args.ranks), f"a-{backend}-{budget}-{s}") for s in seeds]
                print(f"  {budget:3d} trials  {backend:>9}: {fmt(values)}   ({', '.join(f'{v:.4f}' for v in values)})",
                      flush=True)
    if "b" in args.parts:
        print("\n(b) hypervolume of the (top1, trainable_fraction) front, normalized (higher is better)")
        for budget in args.budgets:
            for backend in args.backends:
                values = [normalized_hypervolume(search(front, folder, f"b-{backend}-{budget}-{s}", backend, s,
                                                        budget, args.ranks), f"b-{backend}-{budget}-{s}")
                          for s in seeds]
                print(f"  {budget:3d} trials  {backend:>9}: {fmt(values)}   ({', '.join(f'{v:.4f}' for v in values)})",
                      flush=True)
    if "c" in args.parts:
        budget = args.budgets[0]
        backend = args.pruning_backend
        print(f"\n(c) ASHA (min_epochs {args.min_epochs}, reduction {args.reduction}) vs no pruning, {backend}, "
              f"{budget} trials each")
        rows, runs = [], []
        for s in seeds:
            plain_url = search(single, folder, f"c-none-{s}", backend, s, budget, args.ranks)
            runs += curves(plain_url, f"c-none-{s}")
            asha_url = search(asha, folder, f"c-asha-{s}", backend, s, budget, args.ranks)
            plain_epochs, plain_curve = epochs_and_curve(plain_url, f"c-none-{s}")
            asha_epochs, _ = epochs_and_curve(asha_url, f"c-asha-{s}")
            within = [v for spent, v in plain_curve if spent <= asha_epochs and v is not None]
            rows.append((plain_epochs, asha_epochs, best_value(plain_url, f"c-none-{s}"),
                         best_value(asha_url, f"c-asha-{s}"), min(within) if within else float("nan")))
            print(f"  seed {s}: epochs {plain_epochs} → {asha_epochs} ({asha_epochs / plain_epochs:.0%}); best "
                  f"{rows[-1][2]:.4f} (none) vs {rows[-1][3]:.4f} (asha); none at equal epochs {rows[-1][4]:.4f}",
                  flush=True)
        print(f"  epochs spent, ASHA / none: {fmt([r[1] / r[0] for r in rows])}")
        print(f"  best val_loss, none: {fmt([r[2] for r in rows])}; ASHA: {fmt([r[3] for r in rows])}")
        print(f"  best val_loss at ASHA's epochs, none: {fmt([r[4] for r in rows])}")
        # a rung prunes well only where a trial's value then ranks it as its final value does
        print("  Spearman's rho of val_loss at an epoch with the final val_loss, unpruned trials: " + ", ".join(
            f"epoch {e} {rho:.2f}" for e, (rho, _) in rank_correlations(runs).items()) + f" ({len(runs)} trials)")


if __name__ == "__main__":
    main()
