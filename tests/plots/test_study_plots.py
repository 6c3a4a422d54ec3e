"""``plot`` and ``report`` on one real small study, built once through the CLI as a user would.

The study: two objectives (val_loss, trainable_fraction) with a constraint, ASHA pruning, the Optuna backend
in one process, a model builder that refuses one width (the FAILED trials). The data behind every figure
is compared with the stored values; the figures are checked to be real PNGs, not compared as pixels.
"""

import json
import re
import sqlite3
from html.parser import HTMLParser
from pathlib import Path

import pytest

from oialr_search.plots import (
    best_numbers,
    best_runs,
    learning_curves,
    optuna_study,
    pruned_values,
    stability_series,
    study_figures,
    summaries,
    trade_off,
    trainable_series,
)
from oialr_search.search import dominates
from oialr_search.storage import Store

from ..search.test_search_cli import run
from ._png import assert_png

PICKY = '''
from torch import nn


def picky_mlp(*, num_classes, in_chans, img_size, hidden=32):
    """An MLP that refuses one width: the search's failed trials (the reason has HTML characters)."""
    if hidden == 24:
        raise RuntimeError("injected failure: hidden=24 is refused <on purpose> & logged")
    return nn.Sequential(nn.Flatten(), nn.Linear(in_chans * img_size * img_size, hidden), nn.ReLU(),
                         nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))
'''

SPACE = """\
base:
  model: {name: 'picky_models:picky_mlp', kwargs: {hidden: 32}}
  data: {name: digits, val_fraction: 0.2}
  oialr: {keep_last_layer: false, delay: 0.25, layer_fraction: 1.0}
  train: {epochs: 6, batch_size: 128}
%(objectives)s
pruner: {type: asha, min_epochs: 1, reduction: 2}
sampler: random
params:
  oialr.beta: {type: float, low: 0.05, high: 0.6, log: true}
  optim.lr: {type: float, low: 1.0e-3, high: 2.0e-2, log: true}
  oialr.update_frequency: {type: int, low: 2, high: 8}
  model.kwargs.hidden: {type: categorical, choices: %(hidden)s}
"""
MO = "objectives: [{metric: val_loss}, {metric: trainable_fraction}]\nconstraints: {trainable_fraction: {max: 0.5}}"
FIGURES = {"history_val_loss", "history_trainable_fraction", "trade_off", "parallel_coordinates", "importances",
           "learning_curves", "stability", "lr_vs_trainable"}


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """The folder of a database with study 'mo' (16 trials: complete, pruned, failed, infeasible), 'one'
    (single objective) and 'broken' (every trial failed)."""
    folder = tmp_path_factory.mktemp("study")
    (folder / "picky_models.py").write_text(PICKY)
    (folder / "mo.yaml").write_text(SPACE % {"objectives": MO, "hidden": "[16, 24, 32, 48]"})
    (folder / "one.yaml").write_text(SPACE % {"objectives": "objective: {metric: top1}", "hidden": "[16, 32]"})
    (folder / "broken.yaml").write_text(SPACE % {"objectives": "", "hidden": "[24]"})
    env = {"PYTHONPATH": str(folder), "OMP_NUM_THREADS": "1"}
    for name, budget in (("mo", 16), ("one", 3), ("broken", 2)):
        proc = run(["run", f"{name}.yaml", "--study", name, "--backend", "optuna", "--budget", str(budget),
                    "--seed", "3"], folder, env=env)
        assert proc.returncode == 0, proc.stderr[-3000:]
    states = [r["state"] for r in rows(folder, "mo")]
    feasible = {r["feasible"] for r in rows(folder, "mo") if r["state"] == "COMPLETE"}
    if not ({"COMPLETE", "PRUNED", "FAILED"} <= set(states) and feasible == {0, 1}):
        pytest.fail(f"the seeded study no longer has every kind of trial: states {states}, feasible {feasible}")
    return folder


def rows(folder: Path, study: str) -> list[dict]:
    con = sqlite3.connect(folder / "oialr_search.db")
    con.row_factory = sqlite3.Row
    out = [dict(r) for r in con.execute(
        "SELECT t.*, p.rank_trajectory FROM oialr_trials t JOIN oialr_studies s ON s.id = t.study_id "
        "LEFT JOIN oialr_trial_payloads p ON p.trial_id = t.id WHERE s.name = ? ORDER BY t.number", (study,))]
    for r in out:
        r["epochs"] = [dict(e) for e in con.execute(
            "SELECT * FROM oialr_trial_epochs WHERE trial_id = ? ORDER BY epoch", (r["id"],))]
        for key in ("params", "metrics", "objective_values", "rank_trajectory"):
            r[key] = json.loads(r[key]) if r[key] else None
    con.close()
    return out


def store_of(folder: Path) -> Store:
    return Store(f"sqlite:///{folder}/oialr_search.db", create=False, read_only=True)


def front_numbers(folder: Path) -> list[int]:
    """The non-dominated feasible COMPLETE trials, straight from the stored values (both minimized)."""
    ok = [r for r in rows(folder, "mo") if r["state"] == "COMPLETE" and r["feasible"]]
    return sorted(r["number"] for r in ok if not any(
        dominates(q["objective_values"], r["objective_values"]) for q in ok if q is not r))


# -- the data behind the figures ---------------------------------------------------------------------------
def test_summaries_and_trade_off_are_the_stored_values(study):
    store = store_of(study)
    s = store.get_study("mo")
    stored = rows(study, "mo")
    got = summaries(store, s)
    assert [t.number for t in got] == [r["number"] for r in stored]
    for t, r in zip(got, stored):
        assert t.state == r["state"]
        assert list(t.values) == (r["objective_values"] or [])
        assert t.trainable_fraction == ((r["metrics"] or {}).get("trainable_fraction"))
        assert t.feasible == (None if r["feasible"] is None else bool(r["feasible"]))
        assert t.error == (r["error"].splitlines()[0] if r["error"] else None)
    data = trade_off(s, got)
    complete = [r for r in stored if r["state"] == "COMPLETE"]
    assert data.numbers == [r["number"] for r in complete]
    assert data.x == [r["metrics"]["trainable_fraction"] for r in complete]
    assert data.y == [r["objective_values"][0] for r in complete]
    assert data.feasible == [bool(r["feasible"]) for r in complete]
    assert data.study_front and sorted(data.front) == front_numbers(study)
    cli = json.loads(run(["pareto", "--study", "mo", "--format", "json"], study).stdout)
    assert sorted(data.front) == sorted(t["number"] for t in cli)
    assert data.x_bounds == (None, 0.5)
    numbers, values = pruned_values(got, 0)
    pruned = [r for r in stored if r["state"] == "PRUNED"]
    assert numbers == [r["number"] for r in pruned] and values == [r["objective_values"][0] for r in pruned]


def test_the_optuna_study_holds_every_trial_as_stored(study):
    store = store_of(study)
    s = store.get_study("mo")
    stored = rows(study, "mo")
    full = optuna_study(store, s)
    assert [d.name for d in full.directions] == ["MINIMIZE", "MINIMIZE"]
    assert [t.number for t in full.trials] == [r["number"] for r in stored]  # Optuna's numbers are ours
    first = optuna_study(store, s, objective=0)
    for t, t0, r in zip(full.trials, first.trials, stored):
        assert t.state.name == {"COMPLETE": "COMPLETE", "PRUNED": "PRUNED"}.get(r["state"], "FAIL")
        assert t.params == r["params"]
        if r["state"] == "COMPLETE":
            assert t.values == r["objective_values"] and t0.values == r["objective_values"][:1]
            assert all(v <= 0 for v in t.constraints.values()) == bool(r["feasible"])


def test_learning_curves_are_the_stored_epochs(study):
    store = store_of(study)
    stored = {r["number"]: r for r in rows(study, "mo")}
    curves = learning_curves(store, store.get_study("mo"))
    assert [c.number for c in curves] == [n for n, r in stored.items() if r["epochs"]]
    for c in curves:
        epochs = stored[c.number]["epochs"]
        assert c.state == stored[c.number]["state"]
        assert c.epochs == [e["epoch"] for e in epochs] and c.steps == [e["step"] for e in epochs]
        assert c.val_loss == [e["val_loss"] for e in epochs] and c.top1 == [e["top1"] for e in epochs]
        assert c.lr == [e["lr"] for e in epochs]
        assert c.trainable_fraction == [e["trainable_fraction"] for e in epochs]
        if c.state == "PRUNED":  # a pruned trial's curve ends at the epoch it was stopped
            assert c.epochs[-1] == stored[c.number]["last_epoch"] < 6


def test_best_trials_and_their_oialr_data_are_the_stored_trajectories(study):
    store = store_of(study)
    s = store.get_study("mo")
    stored = {r["number"]: r for r in rows(study, "mo")}
    numbers = best_numbers(s, summaries(store, s), 3)
    front = front_numbers(study)
    by_loss = sorted((r for r in stored.values() if r["state"] == "COMPLETE" and r["feasible"]),
                     key=lambda r: (r["objective_values"][0], r["number"]))
    expected = [r["number"] for r in by_loss if r["number"] in front]
    expected += [r["number"] for r in by_loss if r["number"] not in front]
    assert numbers == expected[:3]
    for run_ in best_runs(store, s, numbers):
        records = stored[run_.curve.number]["rank_trajectory"]
        t = run_.trajectory
        assert t.steps == [r["step"] for r in records] and t.updates == [r["update"] for r in records]
        assert t.trainable_fraction == [r["trainable_fraction"] for r in records]
        assert t.mean_stability == [r["mean_stability"] for r in records]
        assert t.mean_alignment == [r["mean_alignment"] for r in records]
        assert t.layers == list(records[0]["ranks"])
        assert t.ranks == [[r["ranks"][name] for r in records] for name in t.layers]
        steps, fraction = trainable_series(run_)
        assert (steps[0], fraction[0]) == (0, 1.0) and steps[-1] == stored[run_.curve.number]["epochs"][-1]["step"]
        assert fraction[1:len(records) + 1] == [r["trainable_fraction"] for r in records]
        s_steps, stab, a_steps, align = stability_series(run_)
        updates = [r for r in records if r["update"] >= 0]
        assert s_steps == [r["step"] for r in updates] and stab == [r["mean_stability"] for r in updates]
        assert a_steps == s_steps and align == [r["mean_alignment"] for r in updates]


def test_rendering_leaves_no_figure_open(study):
    import matplotlib.pyplot as plt

    store = store_of(study)
    before = plt.get_fignums()
    figures, notes = study_figures(store, store.get_study("mo"), top=2)
    assert plt.get_fignums() == before
    assert not notes
    assert {f.name for f in figures} == FIGURES | {f"ranks_trial_{n}" for n in best_numbers(
        store.get_study("mo"), summaries(store, store.get_study("mo")), 2)}


# -- the verbs ------------------------------------------------------------------------------------------------
def database_state(folder: Path) -> tuple:
    db = folder / "oialr_search.db"
    return db.read_bytes(), db.stat().st_mtime_ns, sorted(p.name for p in folder.iterdir())


def test_plot_writes_every_figure_as_a_png_and_leaves_the_database_alone(study, tmp_path):
    before = database_state(study)
    proc = run(["plot", "--study", "mo", "-o", str(tmp_path / "figs"), "--storage",
                f"sqlite:///{study}/oialr_search.db"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert database_state(study) == before  # read-only: not a byte, no -wal/-shm files
    store = store_of(study)
    s = store.get_study("mo")
    best = best_numbers(s, summaries(store, s), 3)
    expected = FIGURES | {f"ranks_trial_{n}" for n in best}
    paths = [Path(line) for line in proc.stdout.splitlines() if line.endswith(".png")]
    assert {p.stem for p in paths} == expected and len(paths) == len(expected)
    assert sorted(p.name for p in (tmp_path / "figs").iterdir()) == sorted(f"{n}.png" for n in expected)
    for path in paths:
        assert_png(path)


def test_plot_single_objective_study_skips_what_it_cannot_draw(study, tmp_path):
    proc = run(["plot", "--study", "one", "-o", "figs", "--top", "1", "--storage",
                f"sqlite:///{study}/oialr_search.db"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    names = {Path(line).stem for line in proc.stdout.splitlines() if line.endswith(".png")}
    assert {"history_top1", "trade_off", "learning_curves", "stability", "lr_vs_trainable"} <= names
    store = store_of(study)
    s = store.get_study("one")
    complete = [t for t in summaries(store, s) if t.state == "COMPLETE"]
    if len(complete) < 2:  # importances need two completed trials: a note, not a crash
        assert "importances" not in names and "note: skipped parameter importances" in proc.stdout
    for name in names:
        assert_png(tmp_path / "figs" / f"{name}.png")


class _Tables(HTMLParser):
    """The rows of every table, by its id, and every attribute that could load something."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self.current: str | None = None
        self.cell: list[str] | None = None
        self.links: list[tuple[str, str, str]] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "table":
            self.current = attrs.get("id")
            self.tables[self.current] = []
        elif tag == "tr" and self.current is not None:
            self.tables[self.current].append([])
        elif tag in ("td", "th"):
            self.cell = []
        for key in ("src", "href", "data", "action", "srcset", "poster"):
            if key in attrs:
                self.links.append((tag, key, attrs[key]))

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self.cell is not None and self.current is not None:
            self.tables[self.current][-1].append("".join(self.cell))
            self.cell = None
        elif tag == "table":
            self.current = None

    def handle_data(self, data):
        if self.cell is not None:
            self.cell.append(data)


def test_report_is_one_self_contained_file_with_front_figures_and_failures(study, tmp_path):
    before = database_state(study)
    proc = run(["report", "--study", "mo", "-o", "report.html", "--storage", f"sqlite:///{study}/oialr_search.db"],
               tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert database_state(study) == before
    assert proc.stdout.strip().splitlines()[-1] == "report.html"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.html"]
    text = (tmp_path / "report.html").read_text()
    store = store_of(study)
    s = store.get_study("mo")
    n_figures = len(FIGURES) + len(best_numbers(s, summaries(store, s), 3))
    assert text.count("data:image/png;base64,") == n_figures
    # nothing outside the file: no links, scripts, style sheets, fonts or remote images
    assert not re.search(r"<link|<script|@import|url\(|href=|src=\"(?!data:image/png;base64,)", text)
    parsed = _Tables()
    parsed.feed(text)
    assert all(key == "src" and value.startswith("data:image/png;base64,") for _, key, value in parsed.links)
    stored = {r["number"]: r for r in rows(study, "mo")}
    front = parsed.tables["front"][1:]
    assert [int(r[0]) for r in front] == front_numbers(study)
    for r in front:
        values = stored[int(r[0])]["objective_values"]
        assert r[1:3] == [f"{v:.4g}" for v in values]
    failures = parsed.tables["failures"][1:]
    failed = [r for r in stored.values() if r["state"] == "FAILED"]
    assert [int(r[0]) for r in failures] == [r["number"] for r in failed]
    assert all(r[1] == "RuntimeError: injected failure: hidden=24 is refused <on purpose> & logged" for r in failures)
    assert "&lt;on purpose&gt; &amp; logged" in text and "<on purpose>" not in text  # escaped
    counts = {r[0]: int(r[1]) for r in parsed.tables["counts"][1:]}
    assert counts == {state.lower(): sum(r["state"] == state for r in stored.values())
                      for state in ("COMPLETE", "PRUNED", "FAILED")}
    settings = {r[0]: r[1] for r in parsed.tables["settings"][1:]}
    assert settings["objectives"] == "minimize val_loss, minimize trainable_fraction"
    assert settings["constraints"] == "trainable_fraction ≤ 0.5" and settings["backend"] == "optuna"
    assert settings["pruner"] == "asha (min_epochs=1, reduction=2)" and settings["sampler (Optuna backend)"] == "random"
    assert settings["budget"] == "16" and settings["seed"] == "3"
    params = {r[0]: r[1:] for r in parsed.tables["params"][1:]}
    assert params["oialr.beta"] == ["float", "[0.05, 0.6]", "log"]
    assert params["model.kwargs.hidden"] == ["categorical", "16, 24, 32, 48", ""]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["plot", "--study", "ghost", "-o", "figs"], "no study named 'ghost'"),
        (["plot", "--study", "broken", "-o", "figs"], "has no completed trial yet (2 failed)"),
        (["plot", "--study", "mo", "-o", "missing/figs"], "folder missing does not exist"),
        (["plot", "--study", "mo", "-o", "afile"], "exists and is not a folder"),
        (["plot", "--study", "mo", "-o", "dangling"], "is a broken link"),  # (a traceback after rendering)
        (["report", "--study", "mo", "-o", "missing/r.html"], "folder missing does not exist"),
        (["report", "--study", "broken", "-o", "r.html"], "has no completed trial yet"),
        (["report", "--study", "ghost", "-o", "r.html"], "no study named 'ghost'"),
        (["report", "--study", "mo", "-o", "adir"], "is a folder"),
        (["plot", "--study", "mo", "-o", "figs", "--storage", "sqlite:///nothere.db"], "no such database file"),
    ],
)
def test_bad_input_exits_2_with_one_line_and_writes_nothing(study, tmp_path, args, message):
    (tmp_path / "afile").write_text("keep")
    (tmp_path / "adir").mkdir()
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    storage = [] if "--storage" in args else ["--storage", f"sqlite:///{study}/oialr_search.db"]
    before, db = sorted(p.name for p in tmp_path.rglob("*")), database_state(study)
    proc = run([*args, *storage], tmp_path)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"oialr-search {args[0]}: error: ") and message in lines[0], lines
    assert sorted(p.name for p in tmp_path.rglob("*")) == before and (tmp_path / "afile").read_text() == "keep"
    assert database_state(study) == db
