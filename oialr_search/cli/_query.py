"""Query verbs: ``studies``, ``status``, ``trials``, ``best``, ``export``."""

from __future__ import annotations

import argparse
import csv
import io
import json
from datetime import datetime, timezone
from pathlib import Path

import yaml

from ..exceptions import OIALRSearchError
from ..storage import COMPLETE, FAILED, INTERRUPTED, RUNNING, Store, default_storage
from ._common import add_storage, add_study, write_atomic


def _store(args: argparse.Namespace) -> Store:
    return Store(args.storage or default_storage(), create=False)


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    lines = ["  ".join(str(x).ljust(w) for x, w in zip(header, widths)).rstrip()]
    lines += ["  ".join(str(x).ljust(w) for x, w in zip(r, widths)).rstrip() for r in rows]
    return "\n".join(lines)


def _fmt(v: object) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "" if v is None else str(v)


def cmd_studies(args: argparse.Namespace) -> int:
    store = _store(args)
    rows = []
    for study, counts in store.studies():
        best = store.best_trial(study)
        rows.append([study.name, study.backend, f"{study.direction} {study.metric}", counts.get(COMPLETE, 0),
                     counts.get(FAILED, 0), counts.get(RUNNING, 0), counts.get(INTERRUPTED, 0),
                     _fmt(best.value) if best else "-", study.created.strftime("%Y-%m-%d %H:%M")])
    if not rows:
        print(f"no studies in {store.url}")
        return 0
    print(_table(rows, ["study", "backend", "objective", "complete", "failed", "running", "interrupted", "best",
                        "created"]))
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    store = _store(args)
    study = store.get_study(args.study)
    trials = store.trials(study)
    counts = {s: sum(t.state == s for t in trials) for s in (COMPLETE, RUNNING, FAILED, INTERRUPTED)}
    best = store.best_trial(study)
    start = min((t.started for t in trials), default=None)
    now = datetime.now(timezone.utc).replace(tzinfo=None)
    end = max((t.finished or now for t in trials), default=None)
    elapsed = (end - start).total_seconds() if start and end else 0.0
    print(f"study {study.name}  ({study.backend}, {study.direction} {study.metric}, budget {study.budget})")
    print(f"trials: {counts[COMPLETE]} complete, {counts[RUNNING]} running, {counts[FAILED]} failed, "
          f"{counts[INTERRUPTED]} interrupted")
    print(f"elapsed: {elapsed:.0f}s")
    if best:
        print(f"best: trial {best.number}  {study.metric} {best.value:.4f}  "
              + "  ".join(f"{k}={_fmt(v)}" for k, v in best.params.items()))
    else:
        print("best: none yet")
    return 0


def _trial_rows(store: Store, study) -> tuple[list[str], list[list]]:  # noqa: ANN001
    trials = store.trials(study)
    keys = sorted({k for t in trials for k in t.params})
    header = ["number", "state", study.metric, "trainable_fraction", "top1", "rank", "island", "device",
              "duration_s", *keys, "error"]
    rows = []
    for t in trials:
        m = t.metrics or {}
        rows.append([t.number, t.state, t.value, m.get("trainable_fraction"), m.get("top1"), t.rank, t.island,
                     t.device, t.duration, *[t.params.get(k) for k in keys],
                     (t.error or "").splitlines()[0] if t.error else None])
    return header, rows


def cmd_trials(args: argparse.Namespace) -> int:
    store = _store(args)
    study = store.get_study(args.study)
    header, rows = _trial_rows(store, study)
    if args.format == "json":
        print(json.dumps([dict(zip(header, r)) for r in rows], indent=2, default=str))
    elif args.format == "csv":
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(header)
        w.writerows([["" if v is None else v for v in r] for r in rows])
        print(buf.getvalue(), end="")
    else:
        print(_table([[_fmt(v) for v in r] for r in rows], header) if rows else "no trials yet")
    return 0


def _best_or_trial(store: Store, study, number: int | None):  # noqa: ANN001, ANN202
    if number is not None:
        trial = store.get_trial(study, number)
        if trial.state != COMPLETE:
            raise OIALRSearchError(f"trial {number} of study {study.name!r} is {trial.state}, not COMPLETE")
        return trial
    best = store.best_trial(study)
    if best is None:
        raise OIALRSearchError(f"study {study.name!r} has no completed trial yet")
    return best


def cmd_best(args: argparse.Namespace) -> int:
    store = _store(args)
    study = store.get_study(args.study)
    t = _best_or_trial(store, study, None)
    doc = {"study": study.name, "trial": t.number, study.metric: t.value, "params": t.params,
           "metrics": {k: v for k, v in (t.metrics or {}).items() if not isinstance(v, (list, dict))},
           "config": t.config}
    print(json.dumps(doc, indent=2) if args.format == "json" else yaml.safe_dump(doc, sort_keys=False), end="\n")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from ..training import config_from_dict, dump_config

    store = _store(args)
    study = store.get_study(args.study)
    t = _best_or_trial(store, study, args.trial)
    config = config_from_dict(t.config)  # validates; device stays "auto"
    out = Path(args.output)
    if out.is_dir():
        raise OIALRSearchError(f"-o {out}: is a folder; give a file name such as {out / 'tuned.yaml'}")
    header = (f"# exported from study {study.name!r}, trial {t.number}: {study.metric} = {t.value:.6g}\n"
              f"# train it with: oialr-search train {out.name}\n")
    write_atomic(out, header + dump_config(config))
    print(f"wrote {out} (trial {t.number}, {study.metric} {t.value:.4f})")
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
    p = sub.add_parser("best", help="the best trial: parameters, metrics and full config")
    add_study(p)
    p.add_argument("--format", choices=("yaml", "json"), default="yaml")
    p.set_defaults(func=cmd_best)
    p = sub.add_parser("export", help="write a trial's run config, trainable with 'oialr-search train'")
    add_study(p)
    p.add_argument("--trial", type=int, default=None, help="trial number (default: the best)")
    p.add_argument("-o", "--output", required=True, help="YAML file to write")
    p.set_defaults(func=cmd_export)
