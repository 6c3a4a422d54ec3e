"""Query verbs: ``studies``, ``status``, ``trials``, ``pareto``, ``best``, ``export``."""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import shlex
import signal
import sys
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path

from .._files import output_file, write_file_atomic
from .._yaml import dump_yaml
from ..exceptions import OIALRSearchError
from ..search import METRICS, pareto_front, parse_pick, pick
from ..storage import COMPLETE, FAILED, INTERRUPTED, PRUNED, RUNNING, Store, Study, Trial, default_storage, is_dead
from ..storage._paths import recorded_workdir
from ._common import add_storage, add_study, check_not_the_studys_files, write_atomic


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


def _running_and_stopped(store: Store, study: Study, counts: dict[str, int], now: datetime) -> tuple[int, int, list]:
    """(trials running, trials stopped, their heartbeats): dead RUNNING trials are stopped (their deadline has
    passed, or they have none and no live heartbeat: see ``is_dead``), their job was stopped or died; the next job
    resumes them."""
    from ..search._heartbeat import grace_period

    running = list(store.heartbeats(study).values()) if counts.get(RUNNING) else []
    grace = grace_period()
    stopped = sum(is_dead(beat, deadline, now=now, grace=grace) for _, beat, deadline in running)
    return len(running) - stopped, stopped, [beat for _, beat, _ in running]


def cmd_studies(args: argparse.Namespace) -> int:
    store = _store(args)
    now = store.now()
    rows = []
    for study, counts in store.studies():
        if study.multi_objective:
            best = f"front of {len(pareto_front(store, study))}"
        else:
            trial = store.best_trial(study, full=False)
            best = _fmt(trial.value) if trial else "-"
        running, stopped, _ = _running_and_stopped(store, study, counts, now)  # as status counts them
        rows.append([study.name, study.backends_text(store.backends(study)), _objectives_text(study),
                     *(counts.get(s, 0) for s in (COMPLETE, PRUNED, FAILED)), running, stopped,
                     counts.get(INTERRUPTED, 0), best, study.created.strftime("%Y-%m-%d %H:%M")])
    if not rows:
        print(f"no studies in {store.url}")
        return 0
    print(_table(rows, ["study", "backend", "objectives", "complete", "pruned", "failed", "running", "stopped",
                        "interrupted", "best", "created"]))
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    if args.watch is None:
        _status(_store(args), args.study)
        return 0
    if not 0 < args.watch < 10**6:  # also NaN and inf
        raise OIALRSearchError(f"--watch: must be a positive number of seconds (below 10⁶), got {args.watch:g}")
    clear = sys.stdout.isatty()  # a terminal is redrawn; a pipe or a log file gets every refresh in turn
    with _ctrl_c_between_refreshes() as refreshing:
        while True:
            with refreshing():
                store = _store(args)  # anew: a read-only SQLite opened before the search wrote would not see it
                try:
                    if clear:
                        print("\033[H\033[2J", end="")
                    done = _status(store, args.study)
                finally:
                    store.engine.dispose()
                sys.stdout.flush()
            if done:
                return 0
            time.sleep(args.watch)


@contextlib.contextmanager
def _ctrl_c_between_refreshes() -> Iterator[Callable[[], contextlib.AbstractContextManager]]:
    """Ctrl-C during a refresh takes effect when it ends (SQLAlchemy logs a traceback for a KeyboardInterrupt
    raised while it closes a connection: Ctrl-C is to be quiet); a second Ctrl-C stops the refresh at once."""
    state = {"refreshing": False, "pending": False}

    def handler(_signum: int, _frame: object) -> None:
        if state["refreshing"] and not state["pending"]:
            state["pending"] = True
            return
        raise KeyboardInterrupt

    @contextlib.contextmanager
    def refreshing() -> Iterator[None]:
        state["refreshing"] = True
        try:
            yield
        finally:
            state["refreshing"] = False
        if state["pending"]:
            raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield refreshing
    finally:
        signal.signal(signal.SIGINT, previous)


def _status(store: Store, name: str) -> bool:
    """Print the study's status; whether its budget is spent (no trial running, every trial of the budget
    finished), which ends ``status --watch``."""
    study = store.get_study(name)
    counts = store.counts(study)
    start, end, _ = store.time_span(study)
    now = store.now()  # the clock the times were stored with (a server's: see storage/_clock.py)
    running, stopped, beats = _running_and_stopped(store, study, counts, now)
    if running or end is None and not stopped:
        end = now
    elif stopped:  # the last sign of life: a finish, or a stopped trial's last heartbeat (a released one has none)
        end = max([t for t in (end, *beats) if t], default=None)
    elapsed = f"{(end - start).total_seconds():.0f}s" if start and end else "unknown" if start else "0s"
    pruner = (study.space.get("raw") or {}).get("pruner") or "none"
    pruner = pruner.get("type", "none") if isinstance(pruner, dict) else pruner
    constraints = ", ".join(f"{m} {'>= ' + _fmt(b['min']) if 'min' in b else ''}"
                            f"{' and ' if len(b) == 2 else ''}{'<= ' + _fmt(b['max']) if 'max' in b else ''}"
                            for m, b in study.constraints.items())
    backend = study.backends_text(store.backends(study))
    print(f"study {study.name}  ({backend}, {_objectives_text(study)}, pruner {pruner}, budget {study.budget}"
          f"{', constraints: ' + constraints if constraints else ''})")
    if study.space.get("overrides"):
        print(f"overrides: {'; '.join(study.space['overrides'])}")
    recorded = recorded_workdir(study.space)
    if recorded:
        print(f"work folder: {Path(recorded, study.name)} (--workdir)")
    print(f"trials: {counts.get(COMPLETE, 0)} complete, {running} running, "
          + (f"{stopped} stopped, " if stopped else "")
          + f"{counts.get(PRUNED, 0)} pruned, {counts.get(FAILED, 0)} failed, {counts.get(INTERRUPTED, 0)} interrupted")
    if stopped:
        print(f"stopped: {stopped} trial(s) whose job ended or died while training them (no live heartbeat); a job of "
              f"the study resumes them from their checkpoints: oialr-search resume --study {shlex.quote(study.name)}")
    print(f"elapsed: {elapsed}" + (" (no job is training a trial now)" if stopped and not running else "")
          + (": the last job stopped before any trial ended" if elapsed == "unknown" else ""))
    done = not counts.get(RUNNING, 0) and sum(counts.get(s, 0) for s in (COMPLETE, FAILED, PRUNED)) >= study.budget
    if study.multi_objective:
        front = pareto_front(store, study)
        print(f"Pareto front: {len(front)} trial(s)" + (f" ({', '.join(str(t.number) for t in front)}); "
                                                          f"oialr-search pareto --study {study.name}" if front else ""))
        return done
    best = store.best_trial(study, full=False)
    if best:
        print(f"best: trial {best.number}  {study.metric} {best.value:.4f}  "
              + "  ".join(f"{k}={_fmt(v)}" for k, v in best.params.items()))
    else:
        print("best: none yet")
    return done


def _value_columns(study: Study) -> list[str]:
    return [o["metric"] for o in study.objectives]


def _trial_rows(store: Store, study: Study) -> tuple[list[str], list[list]]:
    trials = store.trials(study)
    keys = sorted({k for t in trials for k in t.params})
    objectives = _value_columns(study)
    extra = [m for m in ("top1", "trainable_fraction") if m not in objectives]
    # epochs_done: the last epoch stored, so a RUNNING trial shows how far it got (a killed one, where it stopped)
    header = ["number", "state", *objectives, *(["feasible"] if study.constraints else []), "stopped_at_epoch",
              "epochs_done", *extra, "rank", "island", "device", "duration_s", *keys, "error"]
    rows = []
    for t in trials:
        m = t.metrics or {}
        values = t.values or [None] * len(objectives)
        rows.append([t.number, t.state, *values, *([t.feasible] if study.constraints else []),
                     t.last_epoch if t.state == PRUNED else None, t.last_epoch, *[m.get(k) for k in extra], t.rank,
                     t.island, t.device, t.duration, *[t.params.get(k) for k in keys],
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
    # the searched keys, also with no trial on the front: a CSV's columns do not depend on its rows
    searched = (study.space.get("raw") or {}).get("params") or {}
    keys = sorted({str(k) for k in searched} | {k for t in front for k in t.params})
    header = ["number", *objectives, *keys]
    rows = [[t.number, *t.values, *[t.params.get(k) for k in keys]] for t in front]
    _print_rows(header, rows, args.format, f"study {study.name!r} has no feasible completed trial yet")
    return 0


def _conditions(args: argparse.Namespace) -> list | None:
    return parse_pick(args.pick, METRICS) if getattr(args, "pick", None) is not None else None  # '': refused


def _chosen(store: Store, study: Study, args: argparse.Namespace) -> Trial:
    """--trial N, else --pick, else the best on the first objective (feasible, COMPLETE)."""
    number, conditions = getattr(args, "trial", None), _conditions(args)
    if number is not None:
        trial = store.get_trial(study, number)
        if trial.state != COMPLETE:
            raise OIALRSearchError(f"trial {number} of study {study.name!r} is {trial.state}, not COMPLETE")
        return trial
    if conditions or study.multi_objective:  # (ties on the first objective: the better on the next ones)
        found = pick(store, study, conditions or [])
        if found is None and not conditions:
            raise OIALRSearchError(f"study {study.name!r} has no feasible completed trial yet")
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
    print(json.dumps(doc, indent=2) if args.format == "json" else dump_yaml(doc, sort_keys=False), end="\n")
    return 0


def _outputs(args: argparse.Namespace) -> dict[str, Path]:
    """The files ``export`` is asked to write, by option; checked before the database is opened."""
    outputs = {flag: Path(value) for flag, value in (("-o", args.output), ("--weights", args.weights)) if value}
    if not outputs:
        raise OIALRSearchError("nothing to export: give -o tuned.yaml (the run config) and/or --weights model.pt "
                               "(the trained weights; with --compact as a plain PyTorch model)")
    if args.compact and not args.weights:
        raise OIALRSearchError("--compact writes the trained model as plain PyTorch layers to the --weights file: "
                               "give --weights compact.pt2 too")
    examples = {"-o": "tuned.yaml", "--weights": "compact.pt2" if args.compact else "model.pt"}
    for flag, path in outputs.items():
        output_file(path, option=flag, example=examples[flag], binary=flag == "--weights")
    if len({p.resolve() for p in outputs.values()}) < len(outputs):
        raise OIALRSearchError(f"{', '.join(outputs)}: give each a file of its own")
    check_not_the_studys_files(outputs, args)
    return outputs


def _kept_weights(args: argparse.Namespace, study: Study, t: Trial) -> tuple[Path, dict]:
    """The kept weights of trial ``t``: its weights file and the file's payload; else a one-line error saying
    why there are none."""
    from ..search._weights import weights_file
    from ..storage._paths import study_work_folder
    from ..training import read_weights

    keep = (study.space.get("raw") or {}).get("keep_weights", "front")
    if keep == "none":
        raise OIALRSearchError(f"study {study.name!r} keeps no trained weights (keep_weights: none in its space); "
                               f"train the trial again from its config: export -o tuned.yaml, then train it")
    workdir = args.workdir if args.workdir is not None else recorded_workdir(study.space)
    path = weights_file(study_work_folder(args.storage or default_storage(), study.name, workdir), t.number)
    if not path.is_file():
        which = ("the Pareto front" if keep == "front" else "the best on each objective") if study.multi_objective \
            else "the best trial"
        hint = "" if workdir else "; a search run with --workdir DIR needs --workdir DIR here too"
        raise OIALRSearchError(f"trial {t.number} of study {study.name!r} has no kept weights ({path} missing; "
                               f"keep_weights: {keep} keeps {which}{hint})")
    try:  # read once: the running search may delete the file any moment (its trial fell off the front)
        data = path.read_bytes()
    except FileNotFoundError:
        raise OIALRSearchError(f"trial {t.number} of study {study.name!r} has no kept weights any more (the "
                               "running search deleted them: a newer trial pushed it out of the kept set)") from None
    return data, read_weights(path, data)


class ExportFailed(RuntimeError):
    """torch.export could not take the model: an internal failure (exit code 1), said in one line."""


def _compact(payload: dict, path: Path) -> str:
    """Write the compact model of ``payload`` to ``path``; the line that says what was written."""
    import torch

    from ..lowrank import compact_model, dense_parameter_count, export_compact, parameter_count
    from ..training import build_model, config_from_dict

    model = build_model(config_from_dict(payload["config"]), payload).eval()
    compact = compact_model(model)
    args = payload["model_args"]
    example = torch.randn(2, args["in_chans"], args["img_size"], args["img_size"],
                          generator=torch.Generator().manual_seed(0))
    try:
        export_compact(compact, example, path)
    except Exception as exc:  # noqa: BLE001 - torch.export raises many kinds; not the user's to fix
        raise ExportFailed(f"--compact: torch.export cannot take this model ({type(exc).__name__}: "
                           f"{str(exc).strip().splitlines()[0] if str(exc).strip() else 'no message'}); nothing "
                           "was written; export the weights without --compact and load them with "
                           "oialr_search.load_model") from None
    params, dense = parameter_count(compact), dense_parameter_count(model)
    source = repr(str(path)) if path.suffix == ".pt2" else f"open({str(path)!r}, 'rb')"  # torch wants .pt2 names
    return (f"wrote {path}: {params:,} parameters (the dense model has {dense:,}: {100 * params / dense:.1f}%), "
            f"{path.stat().st_size / 1e6:.2f} MB; plain PyTorch runs it: torch.export.load({source}).module()")


def cmd_export(args: argparse.Namespace) -> int:
    from ..training import config_from_dict, dump_config, stored_run_config

    if args.trial is not None and args.pick:
        raise OIALRSearchError("give either --trial or --pick, not both")
    outputs = _outputs(args)
    _conditions(args)  # a bad --pick is reported before the database is opened
    store = _store(args)
    study = store.get_study(args.study)
    check_not_the_studys_files(outputs, args, recorded=recorded_workdir(study.space))
    t = _chosen(store, study, args)
    config = config_from_dict(stored_run_config(t.config))  # validates; device stays "auto"
    # every check before the first file is written: a refused export writes nothing
    kept, payload = _kept_weights(args, study, t) if "--weights" in outputs else (None, {})
    values = ", ".join(f"{o['metric']} = {v:.6g}" for o, v in zip(study.objectives, t.values or []))
    how = f", picked by {args.pick!r}" if args.pick else ""
    lines = []
    if args.compact:  # first: the one that may fail (a model torch.export cannot take)
        try:
            lines.append(_compact(payload, outputs["--weights"]))
        except ExportFailed as exc:
            print(f"oialr-search export: error: {exc}", file=sys.stderr)
            return 1
    elif "--weights" in outputs:
        write_file_atomic(outputs["--weights"], kept)
        config_arg = repr(str(outputs["-o"])) if "-o" in outputs else "None"  # None: the copy in the file
        lines.append(f"wrote {outputs['--weights']}: the trained weights of trial {t.number}; load them with "
                     f"oialr_search.load_model({config_arg}, {str(outputs['--weights'])!r})")
    if "-o" in outputs:
        out = outputs["-o"]
        header = (f"# exported from study {study.name!r}, trial {t.number}{how}: {values}\n"
                  f"# train it with: oialr-search train {out.name}\n")
        write_atomic(out, header + dump_config(config))
        lines.append(f"wrote {out}: trial {t.number}{how}; {values}")
    if t.feasible is False:  # only --trial reaches one: best, --pick and the front never choose it
        lines.append(f"note: trial {t.number} does not meet the study's constraints (see 'oialr-search trials "
                     f"--study {study.name}'); it is on no front")
    print("\n".join(lines))
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("studies", help="list the studies in a storage")
    add_storage(p)
    p.set_defaults(func=cmd_studies)
    p = sub.add_parser("status", help="trials done/running/failed, best so far, elapsed time")
    add_study(p)
    p.add_argument("--watch", type=float, nargs="?", const=10.0, default=None, metavar="SECONDS",
                   help="print the status again every SECONDS (default 10) until the study's budget is spent")
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
    p = sub.add_parser("export", help="write a trial's run config (trainable with 'oialr-search train'), its "
                                      "trained weights and/or its compact model")
    add_study(p)
    p.add_argument("--trial", type=int, default=None, help="trial number (default: the best on the first objective)")
    p.add_argument("--pick", default=None, metavar="CONDITIONS", help=pick_help)
    p.add_argument("-o", "--output", default=None, help="YAML file to write: the trial's run config")
    p.add_argument("--weights", default=None, metavar="FILE",
                   help="copy the trial's kept trained weights to FILE (for oialr_search.load_model)")
    p.add_argument("--compact", action="store_true",
                   help="with --weights FILE: write the trained model to FILE as plain PyTorch layers "
                        "(torch.export), loadable without this package")
    p.add_argument("--workdir", default=None, metavar="DIR",
                   help="the study's work folder, as given to run (default: next to a SQLite file, else "
                        "./oialr_search_work)")
    p.set_defaults(func=cmd_export)
