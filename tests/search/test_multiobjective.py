"""Multi-objective studies, constraints and early stopping, through the CLI and the runner."""

import json
import math
import shutil
import sqlite3

import pytest

from oialr_search.search import SearchRequest, TrialOutcome, dominates, load_space, run_search
from oialr_search.search.pruners import ASHAPruner
from oialr_search.storage import COMPLETE, PRUNED, Store

from .test_search_cli import run, write_space

MO = """\
objectives: [{metric: top1}, {metric: trainable_fraction}]
constraints: {trainable_fraction: {max: %(max_tf)s}}
pruner: {type: asha, min_epochs: 1, reduction: 2}"""


def write_mo(folder, *, max_tf, epochs=2):
    path = write_space(folder, epochs=epochs, extra=MO % {"max_tf": max_tf})
    path.write_text(path.read_text().replace("objective: {metric: val_loss}\n", ""))


def rows(folder, study):
    con = sqlite3.connect(folder / "oialr_search.db")
    con.row_factory = sqlite3.Row
    out = [dict(r) for r in con.execute(
        "SELECT t.* FROM oialr_trials t JOIN oialr_studies s ON s.id = t.study_id WHERE s.name = ? "
        "ORDER BY t.number", (study,))]
    for r in out:
        r["epochs"] = [e[0] for e in con.execute("SELECT epoch FROM oialr_trial_epochs WHERE trial_id = ? "
                                                 "ORDER BY epoch", (r["id"],))]
    con.close()
    return out


def brute_force_front(trials):
    """Non-dominated feasible COMPLETE trials, straight from the stored values (top1 up, tf down)."""
    ok = [t for t in trials if t["state"] == "COMPLETE" and t["feasible"]]
    pts = {t["number"]: (-json.loads(t["objective_values"])[0], json.loads(t["objective_values"])[1]) for t in ok}
    return sorted(n for n, p in pts.items() if not any(dominates(q, p) for m, q in pts.items() if m != n))


@pytest.mark.parametrize("ranks", [None, 2])
def test_two_objective_study_stores_both_values_and_the_exact_front(tmp_path, ranks):
    # the constraint sits inside the range of trainable fractions so some trials are infeasible
    write_mo(tmp_path, max_tf=0.39, epochs=3)
    proc = run(["run", "space.yaml", "--study", "mo", "--budget", "10"], tmp_path, ranks=ranks)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert ("propulate on" if ranks else "optuna (auto) on") in proc.stdout  # auto: the default sampler
    trials = rows(tmp_path, "mo")
    assert len(trials) >= 10
    for t in trials:
        assert t["state"] in ("COMPLETE", "PRUNED"), t["error"]
        values = json.loads(t["objective_values"])
        assert len(values) == 2 and all(math.isfinite(v) for v in values)
        assert t["epochs"] == list(range(1, t["last_epoch"] + 1))  # every epoch it reached is stored
        if t["state"] == "COMPLETE":
            assert t["last_epoch"] == 3 and t["feasible"] == (values[1] <= 0.39)
        else:
            assert t["last_epoch"] < 3
    front = json.loads(run(["pareto", "--study", "mo", "--format", "json"], tmp_path).stdout)
    assert sorted(t["number"] for t in front) == brute_force_front(trials)
    infeasible = {t["number"] for t in trials if t["state"] == "COMPLETE" and not t["feasible"]}
    assert not infeasible & {t["number"] for t in front}
    best = json.loads(run(["best", "--study", "mo", "--format", "json"], tmp_path).stdout)
    assert [t["trial"] for t in best["pareto_front"]] == [t["number"] for t in front]
    status = run(["status", "--study", "mo"], tmp_path).stdout
    assert f"Pareto front: {len(front)} trial(s)" in status and " pruned" in status
    table = run(["trials", "--study", "mo"], tmp_path).stdout
    assert "stopped_at_epoch" in table.splitlines()[0] and "trainable_fraction" in table.splitlines()[0]
    if front:
        limit = max(t["trainable_fraction"] for t in front)
        exp = run(["export", "--study", "mo", "--pick", f"trainable_fraction<={limit}", "-o", "pick.yaml"], tmp_path)
        assert exp.returncode == 0, exp.stderr
        best_top1 = max(t["top1"] for t in front)
        assert f"top1 = {best_top1:.6g}" in (tmp_path / "pick.yaml").read_text()


def test_an_infeasible_trial_exported_by_number_says_so(tmp_path):
    """--trial N reaches a trial that violates the constraints (best, --pick and the front never choose one):
    the export says so (a sweep: nothing did)."""
    write_mo(tmp_path, max_tf=0.01, epochs=1)  # no trial can meet it
    assert run(["run", "space.yaml", "--study", "inf", "--budget", "1"], tmp_path).returncode == 0
    assert [t["feasible"] for t in rows(tmp_path, "inf")] == [0]
    exp = run(["export", "--study", "inf", "--trial", "0", "-o", "infeasible.yaml"], tmp_path)
    assert exp.returncode == 0 and "note: trial 0 does not meet the study's constraints" in exp.stdout, exp.stderr


def _scripted(curves):
    """An objective whose per-epoch values come from ``curves[x]`` (deterministic, no training)."""

    def objective(space, params, *, report=None, **_):
        curve = curves[params["x"]]
        epochs = []
        for e, (top1, tf) in enumerate(curve, start=1):
            record = {"epoch": e, "step": e, "train_loss": 1.0, "val_loss": 1.0 - top1 / 100, "top1": top1,
                      "top5": 100.0, "lr": 1e-3, "trainable_fraction": tf, "seconds": 0.0, "compression": tf,
                      "train_seconds": float(e)}
            epochs.append(record)
            if report is not None and not report(record) and e < len(curve):
                return TrialOutcome("PRUNED", metrics=dict(record), epochs=epochs)
        return TrialOutcome(COMPLETE, metrics=dict(epochs[-1]), epochs=epochs)

    return objective


@pytest.mark.parametrize("objectives", ["[{metric: top1}]", "[{metric: top1}, {metric: trainable_fraction}]"])
def test_the_service_prunes_exactly_by_the_rule(tmp_path, objectives, capsys):
    """Sequential trials with scripted curves: every decision equals the ASHA rule applied to the epochs
    stored before it (single-objective quantile, multi-objective dominance share)."""
    (tmp_path / "space.yaml").write_text(
        "base: {model: {name: mlp}, data: {name: digits}, train: {epochs: 9}}\n"
        f"objectives: {objectives}\npruner: {{type: asha, min_epochs: 1, reduction: 3}}\n"
        "params: {train.seed: {type: int, low: 0, high: 11}}\n")  # the seed picks a scripted curve
    import random

    rng = random.Random(3)
    curves = {x: [(rng.uniform(10, 90) + 2 * e, rng.uniform(0.1, 1.0)) for e in range(9)] for x in range(12)}
    objective = _scripted(curves)
    space = load_space(tmp_path / "space.yaml")
    url = f"sqlite:///{tmp_path}/db.sqlite"

    def by_seed(space, params, **kw):
        return objective(space, {"x": params["train.seed"]}, **kw)

    assert run_search(SearchRequest(study="s", storage=url, space=space, backend="random", budget=12),
                      objective=by_seed, quiet=False) == 0
    progress = capsys.readouterr().out
    store = Store(url, create=False)
    study = store.get_study("s")
    trials = store.trials(study)
    pruner = ASHAPruner(min_epochs=1, reduction=3)
    n_obj = len(space.objectives)
    seen: dict[int, list] = {}  # epoch -> values of earlier trials (minimize sense)
    pruned_any = kept_best = False
    for t in trials:
        curve = curves[t.params["train.seed"]]
        expected_stop = None
        for e in range(1, 10):
            top1, tf = curve[e - 1]
            own = (-top1, tf)[:n_obj]
            if pruner.decides_at(e, 9):
                if pruner.should_prune(values=own, peers=seen.get(e, [])):
                    expected_stop = e
                elif seen.get(e) and all(own[0] < p[0] for p in seen[e]):
                    kept_best = True  # the rung's best went on
            seen.setdefault(e, []).append(own)
            if expected_stop:
                break
        assert t.last_epoch == (expected_stop or 9), t.number
        assert t.state == ("PRUNED" if expected_stop else COMPLETE)
        assert (f"[trial {t.number}] PRUNED at epoch {expected_stop} (" in progress) == bool(expected_stop)
        pruned_any |= expected_stop is not None
    assert pruned_any and kept_best


def test_queries_answer_while_a_writer_holds_the_lock_and_change_nothing(tmp_path):
    write_mo(tmp_path, max_tf=1.0)
    assert run(["run", "space.yaml", "--study", "ro", "--budget", "3"], tmp_path).returncode == 0
    copy = tmp_path / "copy"
    copy.mkdir()
    shutil.copy(tmp_path / "oialr_search.db", copy / "oialr_search.db")
    before = (copy / "oialr_search.db").read_bytes()
    writer = sqlite3.connect(copy / "oialr_search.db", isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")  # as a search rank in the middle of a write
    try:
        for verb in (["status"], ["trials"], ["best"], ["pareto"], ["studies"]):
            args = [*verb, "--study", "ro"] if verb != ["studies"] else verb
            proc = run(args, copy, timeout=60)
            assert proc.returncode == 0, (verb, proc.stderr)
    finally:
        writer.execute("ROLLBACK")
        writer.close()
    assert (copy / "oialr_search.db").read_bytes() == before


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("objectives: {metric: top1}", "space.yaml: objectives: expected a non-empty list"),
        ("objectives: [{metric: accuracy}]", "space.yaml: objectives[0].metric: must be one of"),
        ("objectives: [{metric: top1, direction: up}]", "space.yaml: objectives[0].direction: must be minimize"),
        ("objectives: [{metric: top1}, {metric: top1}]", "space.yaml: objectives[1].metric: top1 is listed twice"),
        ("objectives: [{metric: top1}]\nobjective: {metric: top1}", "space.yaml: objectives: give either"),
        ("constraints: {params: {max: 1}}", "space.yaml: constraints.params: unknown metric"),
        ("constraints: {top1: {max: high}}", "space.yaml: constraints.top1.max: expected a number"),
        ("constraints: {top1: {below: 3}}", "space.yaml: constraints.top1: expected {min: x}"),
        ("pruner: {type: hyperband}", "space.yaml: pruner.type: must be one of none, median, asha"),
        ("pruner: {type: asha, reduction: 1}", "space.yaml: pruner.reduction: must be an integer >= 2"),
        ("pruner: {type: median, rungs: 3}", "space.yaml: pruner.rungs: unknown field"),
        ("sampler: cmaes", "space.yaml: sampler: must be one of auto, gp, tpe, nsga2, random"),
        ("sampler: {type: nsga2, population_size: 1}", "space.yaml: sampler.population_size: expected an integer"),
        ("sampler: {type: tpe, population_size: 8}", "space.yaml: sampler.population_size: unknown option"),
    ],
)
def test_malformed_entries_exit_2_naming_file_and_key(tmp_path, extra, message):
    write_space(tmp_path, extra=extra)
    (tmp_path / "space.yaml").write_text((tmp_path / "space.yaml").read_text().replace(
        "objective: {metric: val_loss}\n", "" if "objectives" in extra else "objective: {metric: val_loss}\n"))
    before = sorted(p.name for p in tmp_path.iterdir())
    proc = run(["run", "space.yaml", "--study", "x"], tmp_path)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_bad_pick_exits_2_with_one_line(tmp_path):
    write_mo(tmp_path, max_tf=1.0)
    assert run(["run", "space.yaml", "--study", "p", "--budget", "2"], tmp_path).returncode == 0
    before = sorted(p.name for p in tmp_path.iterdir())
    for pick, message in (("accuracy<=3", "unknown metric 'accuracy'"), ("top1 3", "missing operator"),
                          ("top1>=abc", "is not a number"), ("top1>=1000", "no feasible completed trial"),
                          ("", "empty")):  # (an empty --pick was no pick: a sweep)
        for verb in (["best"], ["export", "-o", "x.yaml"]):
            proc = run([*verb, "--study", "p", "--pick", pick], tmp_path)
            lines = proc.stderr.strip().splitlines()
            assert proc.returncode == 2 and len(lines) == 1 and "--pick" in lines[0] and message in lines[0], \
                proc.stderr
    for seed in ("-5", "99999999999", "x"):  # in a new study's range on resume too (a sweep: reduced mod 2**32)
        proc = run(["resume", "--study", "p", "--seed", seed], tmp_path)
        assert proc.returncode == 2 and "--seed: must be a whole number from 0 to 2147483647" in proc.stderr
    # queries on an idle database leave nothing behind: no output file, no -wal/-shm files
    assert run(["status", "--study", "p"], tmp_path).returncode == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == before


PARAMS = {"oialr.beta": 0.1, "optim.lr": 0.005, "oialr.update_frequency": 3, "model.kwargs.hidden": 16}


def _optuna_run(tmp_path, monkeypatch, before, finish, meanwhile=None, own=2, extra=""):
    """Run the Optuna backend for ``own`` trials of its own in a study that ``before(store, study)``
    prepared; ``finish(store, trial)`` stores each of them and returns its (Scored, metrics);
    ``meanwhile(store)`` runs while the first one trains (``meanwhile(store, ostudy)`` if it takes two
    arguments). Returns the backend's Optuna study."""
    import inspect

    import optuna

    from oialr_search.search import _optuna_backend

    write_space(tmp_path, extra=extra)
    space = load_space(tmp_path / "space.yaml")
    store = Store(f"sqlite:///{tmp_path}/db.sqlite")
    study = store.create_study(name="s", space=space.to_dict(), space_path="", metric="val_loss",
                               direction="minimize", backend="optuna", seed=0, budget=4)
    before(store, study)
    studies, calls = [], []
    real = optuna.create_study
    monkeypatch.setattr(optuna, "create_study", lambda **kw: studies.append(real(**kw)) or studies[-1])

    def evaluate(p):
        calls.append(p)
        if len(calls) == 1 and meanwhile is not None:
            meanwhile(*(store, studies[0])[:len(inspect.signature(meanwhile).parameters)])
        if len(calls) > own:
            return None
        mine = store.start_trial(study, params=p, rank=0, island=None, device="cpu")
        return (mine, *finish(store, mine))

    _optuna_backend.run_optuna(space=space, store=store, study=study, seed=0, rank=0, evaluate=evaluate)
    return studies[0]


def _optuna_told(tmp_path, monkeypatch, before, meanwhile):
    """The values the Optuna backend was told, its own two trials completing at 1.0."""
    import optuna

    from oialr_search.search import Scored

    def finish(store, mine):
        store.finish_trial(mine.id, state=COMPLETE, value=1.0, values=[1.0])
        return Scored(COMPLETE, [1.0], None, None), {"val_loss": 1.0}

    ostudy = _optuna_run(tmp_path, monkeypatch, before, finish, meanwhile)
    return sorted(t.values[0] for t in ostudy.trials if t.state == optuna.trial.TrialState.COMPLETE)


def test_an_optuna_process_learns_from_a_trial_that_finished_after_a_later_one(tmp_path, monkeypatch):
    """Another rank's trial 0 finishes after trial 1 was already read: the next ask still sees it."""
    trials = {}

    def before(store, study):
        trials["slow"] = store.start_trial(study, params=PARAMS, rank=1, island=None, device="cpu")  # running
        fast = store.start_trial(study, params={**PARAMS, "oialr.beta": 0.2}, rank=1, island=None, device="cpu")
        store.finish_trial(fast.id, state=COMPLETE, value=0.5, values=[0.5])

    told = _optuna_told(tmp_path, monkeypatch, before, lambda store: store.finish_trial(
        trials["slow"].id, state=COMPLETE, value=0.3, values=[0.3]))
    assert told == [0.3, 0.5, 1.0, 1.0]  # 0.3: the out-of-order trial reached this sampler


def test_a_trial_another_job_marked_interrupted_reaches_the_sampler_once_it_completes(tmp_path, monkeypatch):
    trials = {}

    def before(store, study):
        trials["live"] = store.start_trial(study, params=PARAMS, rank=1, island=None, device="cpu")
        store.mark_interrupted(study)  # a second job started while the first still trains it

    told = _optuna_told(tmp_path, monkeypatch, before, lambda store: store.finish_trial(
        trials["live"].id, state=COMPLETE, value=0.25, values=[0.25]))  # the first job finishes it
    assert told == [0.25, 1.0, 1.0]


def test_optuna_ranks_pruned_trials_by_where_they_stopped(tmp_path, monkeypatch):
    """Pruned trials reach TPE with their value at the stop epoch as the last intermediate value (read
    from the store for another rank's trial, reported live for its own): TPE orders pruned trials by
    it, and without it they all tied."""
    import optuna

    from oialr_search.search import Scored

    def before(store, study):
        other = store.start_trial(study, params=PARAMS, rank=1, island=None, device="cpu")
        store.finish_trial(other.id, state=PRUNED, value=0.7, values=[0.7],
                           epochs=[{"epoch": 1, "val_loss": 0.8}, {"epoch": 2, "val_loss": 0.7}])

    def finish(store, mine):
        store.finish_trial(mine.id, state=PRUNED, value=0.9, values=[0.9], epochs=[{"epoch": 1, "val_loss": 0.9}])
        return Scored(PRUNED, [0.9], True, None, stopped_at=1), {"val_loss": 0.9}

    ostudy = _optuna_run(tmp_path, monkeypatch, before, finish, own=1, extra="sampler: tpe")
    pruned = [t for t in ostudy.trials if t.state == optuna.trial.TrialState.PRUNED]
    assert sorted(list(t.intermediate_values.items()) for t in pruned) == [[(1, 0.9)], [(2, 0.7)]]


SLOW = '''
import time
from torch import nn


class _Slow(nn.Module):
    def __init__(self, num_classes, in_chans, img_size):
        super().__init__()
        self.fc = nn.Linear(in_chans * img_size * img_size, num_classes)

    def forward(self, x):
        time.sleep(0.15)
        return self.fc(x.flatten(1))


def slow_model(**kw):
    return _Slow(kw["num_classes"], kw["in_chans"], kw["img_size"])
'''


def test_a_killed_trial_keeps_the_epochs_it_finished(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    (tmp_path / "slow_models.py").write_text(SLOW)
    write_space(tmp_path, epochs=20, more="  model.name: {type: categorical, choices: ['slow_models:slow_model']}")
    proc = subprocess.Popen([sys.executable, "-m", "oialr_search", "run", "space.yaml", "--study", "k", "--budget",
                             "1"], cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True,
                            env={**os.environ, "OIALR_SEARCH_STORAGE": "", "PYTHONPATH": str(tmp_path)})
    deadline, reached, errs = time.time() + 120, [], []
    try:
        while time.time() < deadline and not reached:
            time.sleep(0.3)
            if not (tmp_path / "oialr_search.db").exists():
                continue
            try:
                reached = [r for r in rows(tmp_path, "k") if r["state"] == "RUNNING" and len(r["epochs"]) >= 2]
            except sqlite3.OperationalError as exc:
                errs.append(str(exc))  # the schema is being created
                continue
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    assert reached, f"no epoch was reported while the trial ran: {errs[-3:]}"
    kept = rows(tmp_path, "k")[0]
    assert kept["epochs"][:2] == [1, 2] and kept["last_epoch"] == len(kept["epochs"])
    store = Store(f"sqlite:///{tmp_path}/oialr_search.db", create=False)
    assert store.mark_interrupted(store.get_study("k")) == 1  # as the previous release did at a job start
    after = rows(tmp_path, "k")[0]
    assert after["state"] == "INTERRUPTED" and after["epochs"] == kept["epochs"]
