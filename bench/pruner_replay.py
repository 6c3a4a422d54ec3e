"""What would a pruner have saved and lost? Replays pruners on the curves of unpruned searches.

    python bench/pruner_replay.py --storage URL [--study NAME ...] [--pruner SPEC ...]

Every COMPLETE trial of an unpruned study holds its whole curve (one stored epoch per epoch), so any
pruner can be replayed on it without training anything: the trials' epochs are taken in the order the
search reached them (each trial's start plus its epochs' seconds), the study's real pruner class
decides at each of its decision epochs against the values of the trials that reached that epoch
before and were not stopped, and a stopped trial spends only the epochs up to its stop. Per pruner,
over the studies (mean ± sd):

  - epochs: the share of the unpruned search's epochs the pruned one spends;
  - best: the pruned search's best first objective minus the unpruned one's (minimize sense, in the
    objective's own units: val_loss, or -top1 in points; > 0 means pruning lost that much);
  - at equal epochs: the pruned search's best minus the unpruned search's best once it had spent as
    many epochs (trials counted in the order they finished; < 0 means pruning was worth its epochs);
  - with several objectives, hv: the hypervolume of the pruned search's front over the unpruned one's
    (reference: the worst value of each objective over the study's completed trials).

What a replay cannot show: the sampler's answer to pruning (its later proposals would differ, since it
learns from stopped trials), and the time a pruned search frees for more trials. It answers which
rungs rank trials well enough on this space; run a small unpruned search (`--parts a` of
bench/search_quality.py keeps its databases with `--keep`) and replay on it before choosing a pruner.

``--pruner`` takes a pruner spec as the space file writes it, e.g. ``'{type: asha, min_epochs: 2}'``
(repeatable); without it a grid of ASHA and median settings is replayed. ``--study`` defaults to
every study in the database that has no PRUNED trial and at least 8 complete ones.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

DEFAULT_PRUNERS = (
    "{type: asha, min_epochs: 1, reduction: 3}",
    "{type: asha, min_epochs: 1, reduction: 2}",
    "{type: asha, min_epochs: 2, reduction: 3}",
    "{type: asha, min_epochs: 2, reduction: 2}",
    "{type: median, min_epochs: 1, min_trials: 4}",
    "{type: median, min_epochs: 2, min_trials: 4}",
)


@dataclass
class Run:
    """One trial of an unpruned study, in minimize sense. Trials that did not complete (failed, still
    running) have no final values but were the others' peers, as in the real runner."""

    curve: dict[int, tuple[float, ...]]  # epoch -> objective values at that epoch
    final: tuple[float, ...]  # the stored objective values (+inf for a trial that did not complete)
    reached: dict[int, float]  # epoch -> seconds since the search began, when the trial finished it
    finished: float
    feasible: bool  # completed and within the study's constraints
    complete: bool


def load_runs(store, study) -> list[Run]:  # noqa: ANN001
    from oialr_search.search._objectives import minimize_sense, objective_values, objectives_from

    objectives = objectives_from(study.objectives)
    trials = store.trials(study)
    epochs = store.study_epochs(study)
    t0 = min((t.started for t in trials), default=None)
    runs = []
    for t in trials:
        records = sorted(epochs.get(t.id, []), key=lambda r: r["epoch"])
        if not records or [r["epoch"] for r in records] != list(range(1, len(records) + 1)):
            continue  # no epoch, or resumed from a checkpoint without its earlier epochs: no whole curve
        clock, reached, curve = (t.started - t0).total_seconds(), {}, {}
        for r in records:
            clock += r.get("seconds") or 0.0
            reached[r["epoch"]] = clock
            curve[r["epoch"]] = minimize_sense(objective_values(r, objectives), objectives)
        complete = t.state == "COMPLETE" and t.values is not None
        final = minimize_sense(t.values, objectives) if complete else (math.inf,) * len(objectives)
        finished = (t.finished - t0).total_seconds() if t.finished is not None else clock
        runs.append(Run(curve, final, reached, finished, complete and t.feasible is not False, complete))
    return runs


def replay(runs: list[Run], pruner) -> tuple[list[int], list[bool]]:  # noqa: ANN001
    """Epochs each trial spends, and whether it went on to its end, under ``pruner``. As the runner
    (search/_reporter.py) asks it: at each decision epoch, against the same-epoch values of every other
    trial that reported that epoch before, whatever became of it; never at the last epoch."""
    max_epochs = max(len(r.curve) for r in runs if r.complete)
    events = sorted((r.reached[e], i, e) for i, r in enumerate(runs) for e in r.curve)
    stopped: dict[int, int] = {}
    seen: dict[int, list[tuple[float, ...]]] = {}  # epoch -> values of the trials that reached it so far
    for _, i, epoch in events:
        if i in stopped:
            continue
        values = runs[i].curve[epoch]
        peers = seen.setdefault(epoch, [])
        if pruner.decides_at(epoch, max_epochs) and pruner.should_prune(values=values, peers=list(peers)):
            stopped[i] = epoch
        peers.append(values)
    spent = [stopped.get(i, len(r.curve)) for i, r in enumerate(runs)]
    return spent, [i not in stopped for i in range(len(runs))]


def _best(runs: list[Run]) -> float:
    return min((r.final[0] for r in runs if r.feasible), default=math.inf)


def _points(runs: list[Run]) -> list[tuple[float, ...]]:
    """The final values of the feasible completed runs (all finite)."""
    return [r.final for r in runs if r.feasible and all(map(math.isfinite, r.final))]


def _hv(runs: list[Run], reference: tuple[float, ...]) -> float:
    from oialr_search.search import hypervolume, non_dominated

    points = _points(runs)
    return hypervolume([points[i] for i in non_dominated(points)], reference) if points else 0.0


def score(runs: list[Run], pruner) -> dict[str, float]:  # noqa: ANN001
    spent, went_on = replay(runs, pruner)
    total = sum(len(r.curve) for r in runs)
    kept = [r for r, on in zip(runs, went_on) if on]
    out = {"epochs": sum(spent) / total, "best": _best(kept) - _best(runs)}
    budget, used, prefix = sum(spent), 0, []
    for r in sorted(runs, key=lambda r: r.finished):  # the unpruned search, within as many epochs
        if used + len(r.curve) > budget:
            break
        used += len(r.curve)
        prefix.append(r)
    out["at_equal"] = _best(kept) - _best(prefix)
    if len(runs[0].final) > 1:
        finite = _points(runs)
        out["hv"] = math.nan  # no feasible completed trial: no front to compare
        if finite:
            reference = tuple(max(p[j] for p in finite) for j in range(len(runs[0].final)))
            whole = _hv(runs, reference)
            out["hv"] = _hv(kept, reference) / whole if whole > 0 else math.nan
    return out


def fmt(xs: list[float], digits: int = 4, *, sign: bool = True) -> str:
    xs = [x for x in xs if math.isfinite(x)]
    if not xs:
        return "-"
    sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
    return f"{statistics.mean(xs):{'+' if sign else ''}.{digits}f} ± {sd:.{digits}f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--storage", required=True, action="append", help="a database of unpruned searches (repeatable)")
    ap.add_argument("--study", action="append", help="a study to replay on (repeatable; default: every unpruned one)")
    ap.add_argument("--pruner", action="append", help="a pruner spec as in a space file (repeatable)")
    ap.add_argument("--min-trials", type=int, default=8, help="skip studies with fewer complete trials")
    args = ap.parse_args()

    from oialr_search.exceptions import OIALRSearchError
    from oialr_search.search import create_pruner
    from oialr_search.storage import PRUNED, Store

    data, metrics = {}, {}
    for url in args.storage:
        try:
            store = Store(url, create=False, read_only=True)
            studies = [(s, counts) for s, counts in store.studies() if not args.study or s.name in args.study]
        except OIALRSearchError as exc:
            sys.exit(str(exc))
        for study, counts in studies:
            if counts.get(PRUNED):
                if args.study:
                    print(f"skipped {study.name}: {counts[PRUNED]} PRUNED trials; a replay needs an unpruned "
                          f"search", file=sys.stderr)
                continue
            runs = load_runs(store, study)
            complete = [r for r in runs if r.complete]
            if len(complete) < args.min_trials or len({len(r.curve) for r in complete}) != 1:
                print(f"skipped {study.name}: {len(complete)} complete trials with whole curves "
                      f"(need {args.min_trials}, all of one length)", file=sys.stderr)
                continue
            key = f"{url}#{study.name}"
            data[key] = runs
            metrics[key] = ", ".join(f"{o['direction']} {o['metric']}" for o in study.objectives)
    if not data:
        sys.exit(f"no unpruned study with {args.min_trials}+ whole curves to replay on in {', '.join(args.storage)}")
    groups: dict[str, list[str]] = {}  # studies of the same objectives: their values share units
    for name in data:
        groups.setdefault(metrics[name], []).append(name)
    for kind, names in sorted(groups.items()):
        n_obj = len(data[names[0]][0].final)
        trials = sum(len(data[n]) for n in names)
        print(f"== {len(names)} unpruned studies, {trials} trials ({kind})")
        header = f"{'pruner':46} {'epochs':>15} {'best (+ = lost)':>17} {'at equal epochs':>17}"
        print(header + (f" {'hv / unpruned':>15}" if n_obj > 1 else ""))
        for spec in args.pruner or DEFAULT_PRUNERS:
            pruner = create_pruner(yaml.safe_load(spec))
            scores = [score(data[n], pruner) for n in names]
            line = (f"{spec:46} {fmt([s['epochs'] for s in scores], 2, sign=False):>15} "
                    f"{fmt([s['best'] for s in scores]):>17} {fmt([s['at_equal'] for s in scores]):>17}")
            print(line + (f" {fmt([s['hv'] for s in scores], 3, sign=False):>15}" if n_obj > 1 else ""), flush=True)


if __name__ == "__main__":
    main()
