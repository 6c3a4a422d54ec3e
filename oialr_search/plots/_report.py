"""``oialr-search report``: one self-contained HTML file per study.

The front (or the best trial), the best trials' configs, every figure (embedded as PNG data URIs), the
failures with their reasons, the counts by state and the study's settings.
"""

from __future__ import annotations

from .._yaml import dump_yaml
from ..search import pareto_front
from ..storage import COMPLETE, FAILED, Store, Study, Trial
from ._common import RenderedFigure
from ._html import details, document, esc, figure, table
from ._render import study_figures
from ._study_data import TrialSummary, best_numbers, require_completed, state_counts, summaries


def _spec(spec: object, default: str) -> str:
    """A pruner or sampler spec as one line: ``asha (min_epochs=1, reduction=3)``."""
    if spec is None:
        return default
    if isinstance(spec, dict):
        options = ", ".join(f"{k}={v}" for k, v in spec.items() if k != "type")
        return f"{spec.get('type', default)}" + (f" ({options})" if options else "")
    return str(spec)


def _constraints(study: Study) -> str:
    parts = []
    for metric, b in study.constraints.items():
        bounds = [f"≥ {b['min']:g}" if b.get("min") is not None else "", f"≤ {b['max']:g}" if b.get("max") is not None
                  else ""]
        parts.append(f"{metric} {' and '.join(x for x in bounds if x)}")
    return "; ".join(parts) or "none"


def _param_rows(study: Study) -> list[list[object]]:
    rows = []
    for key, spec in ((study.space.get("raw") or {}).get("params") or {}).items():
        if not isinstance(spec, dict):
            continue
        if spec.get("type") == "categorical":
            rows.append([key, "categorical", ", ".join(str(c) for c in spec.get("choices") or []), ""])
        else:
            rows.append([key, spec.get("type"), f"[{spec.get('low')}, {spec.get('high')}]",
                         "log" if spec.get("log") else "linear"])
    return rows


def settings_section(study: Study, backends: dict[str, int]) -> list[str]:
    """The study's settings: objectives, constraints, pruner, sampler, backend, budget, seed, searched params
    and their ranges, overrides."""
    raw = study.space.get("raw") or {}
    overrides = study.space.get("overrides") or []
    rows = [["objectives", ", ".join(f"{o['direction']} {o['metric']}" for o in study.objectives)],
            ["constraints", _constraints(study)],
            ["pruner", _spec(raw.get("pruner"), "none")],
            ["sampler (Optuna backend)", _spec(study.space.get("sampler") or raw.get("sampler"), "tpe")],
            ["backend", study.backends_text(backends)], ["budget", str(study.budget)], ["seed", str(study.seed)],
            ["space file", study.space_path or study.space.get("path") or ""],
            ["trial timeout", f"{raw['trial_timeout']} s" if raw.get("trial_timeout") else "none"],
            ["overrides (--set)", "; ".join(overrides) or "none"],
            ["created", study.created.strftime("%Y-%m-%d %H:%M:%S UTC")]]
    out = ["<h2>Settings</h2>", table(["setting", "value"], rows, table_id="settings"),
           "<h3>Searched parameters</h3>",
           table(["parameter", "type", "range or choices", "scale"], _param_rows(study), table_id="params",
                 empty="no parameters")]
    base = study.space.get("base")
    if base:
        out.append(details("base run config (after set: and the overrides)", dump_yaml(base, sort_keys=False)))
    return out


def _trial_table(study: Study, trials: list[Trial], table_id: str, empty: str) -> str:
    metrics = [o["metric"] for o in study.objectives]
    extra = [m for m in ("top1", "trainable_fraction") if m not in metrics]
    keys = sorted({k for t in trials for k in t.params})
    rows = [[t.number, *(t.values or [None] * len(metrics)), *[(t.metrics or {}).get(m) for m in extra],
             *[t.params.get(k) for k in keys]] for t in trials]
    return table(["trial", *metrics, *extra, *keys], rows, table_id=table_id, empty=empty)


def results_section(store: Store, study: Study, numbers: list[int]) -> tuple[list[str], list[Trial]]:
    """The front (several objectives) or the best trial (one), and the best trials with their configs."""
    out = []
    if study.multi_objective:
        front = pareto_front(store, study)
        out += ["<h2>Pareto front</h2>",
                f"<p>The {len(front)} feasible completed trial(s) no other trial beats in every objective.</p>",
                _trial_table(study, front, "front", "no feasible completed trial")]
    else:
        best = store.best_trial(study, full=False)
        out += ["<h2>Best trial</h2>",
                _trial_table(study, [best] if best else [], "front", "no feasible completed trial")]
    best_trials = [store.get_trial(study, n, full=True) for n in numbers]
    out += ["<h2>Best configurations</h2>",
            f"<p>The {len(best_trials)} best feasible completed trial(s) by {esc(study.objectives[0]['metric'])}"
            + (", members of the Pareto front first" if study.multi_objective else "")
            + f". Export one with <code>oialr-search export --study {esc(study.name)} --trial N -o tuned.yaml"
              "</code>.</p>",
            _trial_table(study, best_trials, "best", "no feasible completed trial")]
    for t in best_trials:
        if t.config:
            out.append(details(f"trial {t.number}: full run config", dump_yaml(t.config, sort_keys=False)))
    return out, best_trials


def failures_section(rows: list[TrialSummary]) -> list[str]:
    """The failed trials with the first line of their stored error."""
    failed = [[r.number, r.error or "(no reason stored)"] for r in rows if r.state == FAILED]
    return ["<h2>Failures</h2>", table(["trial", "reason (first line of the stored error)"], failed,
                                       table_id="failures", empty="no trial failed")]


def figures_section(figures: list[RenderedFigure], notes: list[str]) -> list[str]:
    out = ["<h2>Figures</h2>"]
    out += [figure(f.png, f.title, f.caption, name=f.name) for f in figures]
    out += [f'<p class="note">{esc(n)}</p>' for n in notes]
    return out


def study_report(store: Store, study: Study, *, top: int = 3) -> tuple[str, list[str]]:
    """The HTML report of ``study`` and the notes on skipped figures. Raises ``PlotError`` when the study has
    no completed trial."""
    rows = summaries(store, study)
    require_completed(study, rows)
    figures, notes = study_figures(store, study, top=top)
    counts = state_counts(rows)
    start, end, running = store.time_span(study)
    now = store.now()  # the clock the times were stored with (a server's: see storage/_clock.py)
    elapsed = ((now if running or end is None else end) - start).total_seconds() if start else 0.0
    results, _ = results_section(store, study, best_numbers(study, rows, top))
    summary = table(["state", "trials"], [[s.lower(), n] for s, n in counts.items()], table_id="counts")
    objectives = ", ".join(f"{o['direction']} {o['metric']}" for o in study.objectives)
    body = [f"<h1>Study {esc(study.name)}</h1>",
            f'<p class="meta">{esc(objectives)}; '
            f"{len(rows)} trial(s), {counts.get(COMPLETE, 0)} completed; {elapsed:.0f} s from the first start to the "
            f"last finish; report made {now:%Y-%m-%d %H:%M} UTC by oialr-search.</p>",
            "<h2>Trials by state</h2>", summary, *results, *figures_section(figures, notes),
            *failures_section(rows), *settings_section(study, store.backends(study))]
    return document(f"oialr-search study {study.name}", body), notes
