"""Query verbs: ``studies``, ``status``, ``trials``, ``pareto``, ``best``, ``export``."""

from __future__ import annotations

import argparse
import csv
import io
import json
from datetime import datetime, timezone
from pathlib import Path

import yaml

from ..exceptions import OIALRSearchError
from ..search import METRICS, pareto_front, parse_pick, pick
from ..storage import COMPLETE, FAILED, INTERRUPTED, PRUNED, RUNNING, Store, Study, Trial, default_storage
from ._common import add_storage, add_study, write_atomic


def _store(args: argparse.Namespace) -> Store:
    # queries open SQLite read-only: they never wait for, or block, a running search's writers
    return Store(args.storage or default_storage(), create=False, read_only=True)


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    lines = ["  ".join(str(x).ljust(w) for x, w in zip(header, widths)).rstrip()]
    lines += ["  ".join(str(x).ljust(w) for x, w in zip(r, widths)).rstrip() for r in rows]
    return "\n".join(lines)


def _fmt(v: object) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "" if v is None else str(v)


def _print_rows(header: list[str], rows: list[list], fmt: str, empty: str) -> None:
    if fmt == "json":
        print(json.dumps([dict(zip(header, r)) for r in rows], indent=2, default=str))
    elif fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(header)
        w.writerows([["" if v is None else v for v in r] for r in rows])
        print(buf.getvalue(), end="")
    else:
        print(_table([[_fmt(v) for v in r] for r in rows], header) if rows else empty)


def _objectives_text(study: Study) -> str:
    return ", ".join(f"{o['direction']} {o['metric']}" for o in study.objectives)


def cmd_studies(args: argparse.Namespace) -> int:
    store = _store(args)
    rows = []
    for study, counts in store.studies():
        if study.multi_objective:
            best = f"front of {len(pareto_front(store, study))}"
        else:
            trial = store.best_trial(study, full=False)
            best = _fmt(trial.value) if trial else "-"
        rows.append([study.name, study.backend, _objectives_text(study), counts.get(COMPLETE, 0),
                     counts.get(PRUNED, 0), counts.get(FAILED, 0), counts.get(RUNNING, 0), counts.get(INTERRUPTED, 0),
                     best, study.created.strftime("%Y-%m-%d %H:%M")])
    if not rows:
        print(f"no studies in {store.url}")
        return 0
    print(_table(rows, ["study", "backend", "objectives", "complete", "pruned", "failed", "running", "interrupted",
                        "best", "created"]))
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    store = _store(args)
    study = store.get_study(args.study)
    counts = store.counts(study)
    start, end, running = store.time_span(study)
    now = datetime.now(timezone.utc).replace(tzinfo=None)
    end = now if running or end is None else end
    elapsed = (end - start).total_seconds() if start else 0.0
    pruner = (study.space.get("raw") or {}).get("pruner") or "none"
    pruner = pruner.get("type", "none") if isinstance(pruner, dict) else pruner
    constraints = ", ".join(f"{m} {'>= ' + _fmt(b['min']) if 'min' in b else ''}"
                            f"{' and ' if len(b) == 2 else ''}{'<= ' + _fmt(b['max']) if 'max' in b else ''}"
                            for m, b in study.constraints.items())
    print(f"study {study.name}  ({study.backend}, {_objectives_text(study)}, pruner {pruner}, budget {study.budget}"
          f"{', constraints: ' + constraints if constraints else ''})")
    if study.space.get("overrides"):
        print(f"overrides: {'; '.join(study.space['overrides'])}")
    print(f"trials: {counts.get(COMPLETE, 0)} complete, {counts.get(RUNNING, 0)} running, {counts.get(PRUNED, 0)} "
          f"pruned, {counts.get(FAILED, 0)} failed, {counts.get(INTERRUPTED, 0)} interrupted")
    print(f"elapsed: {elapsed:.0f}s")
    if study.multi_objective:
        front = pareto_front(store, study)
        print(f"Pareto front: {len(front)} trial(s)" + (f" ({', '.join(str(t.number) for t in front)}); "
                                                          f"oialr-search pareto --study {study.name}" if front else ""))
        return 0
    best = store.best_trial(study, full=False)
    if best:
        print(f"best: trial {best.number}  {study.metric} {best.value:.4f}  "
              + "  ".join(f"{k}={_fmt(v)}" for k, v in best.params.items()))
    else:
        print("best: none yet")
    return 0


def _value_columns(study: Study) -> list[str]:
    return [o["metric"] for o in study.objectives]


def _trial_rows(store: Store, study: Study) -> tuple[list[str], list[list]]:
    trials = store.trials(study)
    keys = sorted({k for t in trials for k in t.params})
    objectives = _value_columns(study)
    extra = [m for m in ("top1", "trainable_fraction") if m not in objectives]
    header = ["number", "state", *objectives, *(["feasible"] if study.constraints else []), "stopped_at_epoch",
              *extra, "rank", "island", "device", "duration_s", *keys, "error"]
    rows = []
    for t in trials:
        m = t.metrics or {}
        values = t.values or [None] * len(objectives)
        rows.append([t.number, t.state, *values, *([t.feasible] if study.constraints else []),
                     t.last_epoch if t.state == PRUNED else None, *[m.get(k) for k in extra], t.rank, t.island,
                     t.device, t.duration, *[t.params.get(k) for k in keys],
                     (t.error or "").splitlines()[0] if t.error else None])
    return header, rows


def cmd_trials(args: argparse.Namespace) -> int:
    store = _store(args)
    study = store.get_study(args.study)
    header, rows = _trial_rows(store, study)
    _print_rows(header, rows, args.format, "no trials yet")
    return 0


def cmd_pareto(args: argparse.Namespace) -> int:
    store = _store(args)
    study = store.get_study(args.study)
    front = pareto_front(store, study)
    objectives = _value_columns(study)
    keys = sorted({k for t in front for k in t.params})
    header = ["number", *objectives, *keys]
    rows = [[t.number, *t.values, *[t.params.get(k) for k in keys]] for t in front]
    _print_rows(header, rows, args.format, f"study {study.name!r} has no feasible completed trial yet")
    return 0


def _conditions(args: argparse.Namespace) -> list | None:
    return parse_pick(args.pick, METRICS) if getattr(args, "pick", None) else None


def _chosen(store: Store, study: Study, args: argparse.Namespace) -> Trial:
    """--trial N, else --pick, else the best on the first objective (feasible, COMPLETE)."""
    number, conditions = getattr(args, "trial", None), _conditions(args)
    if number is not None:
        trial = store.get_trial(study, number)
        if trial.state != COMPLETE:
            raise OIALRSearchError(f"trial {number} of study {study.name!r} is {trial.state}, not COMPLETE")
        return trial
    if conditions:
        found = pick(store, study, conditions)
        if found is None:
            raise OIALRSearchError(f"--pick {args.pick!r}: no feasible completed trial of study {study.name!r} "
                                   f"meets it; see 'oialr-search pareto --study {study.name}'")
        return store.get_trial(study, found.number)
    best = store.best_trial(study)
    if best is None:
        raise OIALRSearchError(f"study {study.name!r} has no feasible completed trial yet")
    return best


def _doc(study: Study, t: Trial, *, config: bool) -> dict:
    doc = {"trial": t.number, **{o["metric"]: v for o, v in zip(study.objectives, t.values or [])},
           "params": t.params,
           "metrics": {k: v for k, v in (t.metrics or {}).items() if not isinstance(v, (list, dict))}}
    return {**doc, "config": t.config} if config else doc


def cmd_best(args: argparse.Namespace) -> int:
    _conditions(args)  # a bad --pick is reported before the database is opened
    store = _store(args)
    study = store.get_study(args.study)
    if study.multi_objective and not args.pick:
        front = pareto_front(store, study)
        if not front:
            raise OIALRSearchError(f"study {study.name!r} has no feasible completed trial yet")
        doc = {"study": study.name, "objectives": list(study.objectives),
               "pareto_front": [_doc(study, t, config=False) for t in front]}
    else:
        doc = {"study": study.name, **_doc(study, _chosen(store, study, args), config=True)}
    print(json.dumps(doc, indent=2) if args.format == "json" else yaml.safe_dump(doc, sort_keys=False), end="\n")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from ..training import config_from_dict, dump_config

    if args.trial is not None and args.pick:
        raise OIALRSearchError("give either --trial or --pick, not both")
    out = Path(args.output)
    if out.is_dir():
        raise OIALRSearchError(f"-o {out}: is a folder; give a file name such as {out / 'tuned.yaml'}")
    _conditions(args)  # a bad --pick is reported before the database is opened
    store = _store(args)
    study = store.get_study(args.study)
    t = _chosen(store, study, args)
    config = config_from_dict(t.config)  # validates; device stays "auto"
    values = ", ".join(f"{o['metric']} = {v:.6g}" for o, v in zip(study.objectives, t.values or []))
    how = f", picked by {args.pick!r}" if args.pick else ""
    header = (f"# exported from study {study.name!r}, trial {t.number}{how}: {values}\n"
              f"# train it with: oialr-search train {out.name}\n")
    write_atomic(out, header + dump_config(config))
    print(f"wrote {out}: trial {t.number}{how}; {values}")
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("studies", help="list the studies in a storage")
    add_storage(p)
    p.set_defaults(func=cmd_studies)
    p = sub.add_parser("status", help="trials done/running/failed, best so far, elapsed time")
    add_study(p)
    p.set_defaults(func=cmd_status)
    p = sub.add_parser("trials", help="every trial of a study")
    add_study(p)
    p.add_argument("--format", choices=("table", "json", "csv"), default="table")
    p.set_defaults(func=cmd_trials)
    p = sub.add_parser("pareto", help="the Pareto front: non-dominated feasible completed trials")
    add_study(p)
    p.add_argument("--format", choices=("table", "json", "csv"), default="table")
    p.set_defaults(func=cmd_pareto)
    pick_help = ("choose the best trial on the first objective among those meeting conditions on metrics, "
                 "e.g. 'trainable_fraction<=0.1' or 'top1>=90,compression<0.5'")
    p = sub.add_parser("best", help="the best trial (the Pareto front of a multi-objective study): parameters, "
                                    "metrics and full config")
    add_study(p)
    p.add_argument("--format", choices=("yaml", "json"), default="yaml")
    p.add_argument("--pick", default=None, metavar="CONDITIONS", help=pick_help)
    p.set_defaults(func=cmd_best)
    p = sub.add_parser("export", help="write a trial's run config, trainable with 'oialr-search train'")
    add_study(p)
    p.add_argument("--trial", type=int, default=None, help="trial number (default: the best on the first objective)")
    p.add_argument("--pick", default=None, metavar="CONDITIONS", help=pick_help)
    p.add_argument("-o", "--output", required=True, help="YAML file to write")
    p.set_defaults(func=cmd_export)
