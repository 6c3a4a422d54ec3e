"""The search service as users run it: through the CLI, under the venv's mpiexec, with timeouts.

A hang fails the test (the whole process group is killed) instead of hanging CI.
"""

import contextlib
import json
import math
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from oialr_search.search import load_space

from .._processes import run_killable

BIN = Path(sys.executable).parent
MPIEXEC = BIN / "mpiexec"

SPACE = """\
base:
  model: {name: mlp, kwargs: {hidden: 24, depth: 1}}
  data: {name: digits, val_fraction: 0.2}
  oialr: {keep_last_layer: false, delay: 0.3}
  train: {epochs: %(epochs)d, batch_size: 128}
objective: {metric: val_loss}
%(extra)s
params:
  oialr.beta: {type: float, low: 0.05, high: 0.5, log: true}
  optim.lr: {type: float, low: 1.0e-3, high: 1.0e-2, log: true}
  oialr.update_frequency: {type: int, low: 2, high: 10}
  model.kwargs.hidden: {type: categorical, choices: [16, 24]}
%(more)s
"""

FAULTY = '''
import time
import torch
from torch import nn


class _Net(nn.Module):
    def __init__(self, mode, num_classes, in_chans, img_size):
        super().__init__()
        self.mode = mode
        self.fc = nn.Linear(in_chans * img_size * img_size, num_classes)

    def forward(self, x):
        if self.mode == "raise":
            raise RuntimeError("injected failure")
        if self.mode == "hang":
            time.sleep(3600)
        out = self.fc(x.flatten(1))
        return out * float("nan") if self.mode == "nan" else out


def nan_model(**kw):
    return _Net("nan", kw["num_classes"], kw["in_chans"], kw["img_size"])


def raising_model(**kw):
    return _Net("raise", kw["num_classes"], kw["in_chans"], kw["img_size"])


def hanging_model(**kw):
    return _Net("hang", kw["num_classes"], kw["in_chans"], kw["img_size"])
'''


def write_space(folder: Path, *, epochs=2, extra="", more="", name="space.yaml") -> Path:
    path = folder / name
    path.write_text(SPACE % {"epochs": epochs, "extra": extra, "more": more})
    return path


def run(args, cwd, *, ranks=None, timeout=240, env=None):
    """Run the CLI (under mpiexec when ``ranks``); kill the whole process group on timeout."""
    cmd = [sys.executable, "-m", "oialr_search", *args]
    if ranks:  # -m mpi4py: an uncaught exception aborts every rank instead of hanging them
        cmd = [sys.executable, "-m", "mpi4py", *cmd[1:]]
        if not MPIEXEC.exists():
            pytest.fail(f"{MPIEXEC} missing: install the package with the [mpich] extra (launch/test.sh does)")
        cmd = [str(MPIEXEC), "-n", str(ranks), *cmd]
    # one torch thread a process: spinning OpenMP threads on a loaded machine (the other test worker) cost 5x
    return run_killable(cmd, cwd=cwd, timeout=timeout, env={**os.environ, "OIALR_SEARCH_STORAGE": "",
                                                            "OMP_NUM_THREADS": "1", **(env or {})})


def trials(folder: Path, study: str) -> list[dict]:
    con = sqlite3.connect(folder / "oialr_search.db")
    con.row_factory = sqlite3.Row
    rows = con.execute("SELECT t.*, p.config, p.rank_trajectory FROM oialr_trials t "
                       "JOIN oialr_studies s ON s.id = t.study_id "
                       "LEFT JOIN oialr_trial_payloads p ON p.trial_id = t.id "
                       "WHERE s.name = ? ORDER BY t.number", (study,)).fetchall()
    con.close()
    return [dict(r) for r in rows]


@pytest.mark.parametrize("ranks", [2, 4])
def test_propulate_search_stores_every_trial(tmp_path, ranks):
    start = load_space(write_space(tmp_path, extra="set: {oialr.update_frequency: 5}")).start_params()
    assert start  # the run config lies in the space: a fresh search trains it first
    proc = run(["run", "space.yaml", "--study", "p", "--budget", "8"], tmp_path, ranks=ranks)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"propulate on {ranks} rank(s)" in proc.stdout
    rows = trials(tmp_path, "p")
    assert len(rows) >= 8 and all(r["state"] == "COMPLETE" for r in rows)
    assert {r["rank"] for r in rows} == set(range(ranks))
    if ranks == 4:
        assert {r["island"] for r in rows} == {0, 1}
    # a fresh search: the 8 trials are one Latin hypercube, one point in each eighth of every float range (log
    # ranges in log space); with 2 islands each has half of it, and the run config's values on rank 0 may
    # share an eighth with the other island's point. Uniform draws: >= 7 eighths of both with p = 0.5%
    first = [json.loads(r["params"]) for r in rows[:8]]
    assert json.loads(min((r for r in rows if r["rank"] == 0), key=lambda r: r["number"])["params"]) == \
        pytest.approx(start)
    for key, lo, hi in (("oialr.beta", 0.05, 0.5), ("optim.lr", 1e-3, 1e-2)):
        eighths = {min(7, int(math.log(p[key] / lo) / math.log(hi / lo) * 8)) for p in first}
        assert len(eighths) >= (8 if ranks == 2 else 7), (key, [p[key] for p in first])
    assert all(json.loads(r["rank_trajectory"]) for r in rows)
    status = run(["status", "--study", "p"], tmp_path)
    assert status.returncode == 0 and "complete" in status.stdout and "best: trial" in status.stdout


def test_optuna_fallback_with_and_without_mpi(tmp_path):
    write_space(tmp_path)
    single = run(["run", "space.yaml", "--study", "single", "--budget", "5"], tmp_path)
    assert single.returncode == 0, single.stderr[-3000:]
    assert "using the Optuna fallback" in single.stdout
    assert [r["state"] for r in trials(tmp_path, "single")] == ["COMPLETE"] * 5
    both = run(["run", "space.yaml", "--study", "mpi", "--budget", "6", "--backend", "optuna"], tmp_path, ranks=2)
    assert both.returncode == 0, both.stderr[-3000:]
    rows = trials(tmp_path, "mpi")
    assert len(rows) == 6 and {r["rank"] for r in rows} == {0, 1}
    # a trial trained under MPI (one thread per rank here) reproduces exactly from its export
    assert run(["export", "--study", "mpi", "-o", "mpi.yaml"], tmp_path).returncode == 0
    best = json.loads(run(["best", "--study", "mpi", "--format", "json"], tmp_path).stdout)
    again = run(["train", "mpi.yaml", "--quiet", "--out", "mpi.json"], tmp_path)
    assert again.returncode == 0, again.stderr
    assert json.loads((tmp_path / "mpi.json").read_text())["val_loss"] == pytest.approx(best["val_loss"], rel=1e-6)
    # resume the single-process study with a larger budget
    more = run(["resume", "--study", "single", "--budget", "7"], tmp_path)
    assert more.returncode == 0, more.stderr[-3000:]
    assert len(trials(tmp_path, "single")) == 7
    # what ran is stored with each trial and shown, where the study's backend is what its first job asked for
    # (found by a sweep: status said propulate, although every trial was proposed by the Optuna fallback)
    assert {r["backend"] for r in trials(tmp_path, "single")} == {"optuna"}
    status = run(["status", "--study", "single"], tmp_path).stdout.splitlines()[0]
    assert status.startswith("study single  (propulate (trials by optuna 7), minimize val_loss"), status
    assert "propulate (trials by optuna 7)" in run(["studies"], tmp_path).stdout
    assert run(["status", "--study", "mpi"], tmp_path).stdout.startswith("study mpi  (optuna, minimize")


def test_faults_are_stored_failed_and_the_search_goes_on(tmp_path):
    (tmp_path / "faulty_models.py").write_text(FAULTY)
    write_space(tmp_path, extra="trial_timeout: 10", more=(
        "  model.name: {type: categorical, choices: [mlp, 'faulty_models:nan_model', "
        "'faulty_models:raising_model', 'faulty_models:hanging_model']}"))
    proc = run(["run", "space.yaml", "--study", "f", "--budget", "12"], tmp_path, ranks=2, timeout=400,
               env={"PYTHONPATH": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = trials(tmp_path, "f")
    assert len(rows) >= 12 and all(r["state"] in ("COMPLETE", "FAILED") for r in rows)
    by_model = {}
    for r in rows:
        by_model.setdefault(json.loads(r["params"])["model.name"], []).append(r)
    for name, expected in (("faulty_models:nan_model", "nan"), ("faulty_models:raising_model", "injected failure"),
                           ("faulty_models:hanging_model", "timeout")):
        for r in by_model.get(name, []):
            assert r["state"] == "FAILED" and expected in r["error"].lower(), r["error"]
    assert any(r["state"] == "FAILED" for r in rows) and any(r["state"] == "COMPLETE" for r in rows)
    # rank 0's progress line says why, in short (a sweep found only "FAILED", the reason in 'trials' alone)
    failed = [line for line in proc.stdout.splitlines() if "] FAILED" in line]
    assert failed and all(line.split("] FAILED", 1)[1].startswith(" (") for line in failed), failed


def test_killed_search_resumes_with_another_rank_count(tmp_path):
    write_space(tmp_path, epochs=6)
    cmd = [str(MPIEXEC), "-n", "2", sys.executable, "-m", "mpi4py", "-m", "oialr_search", "run", "space.yaml",
           "--study", "k", "--budget", "200"]
    # the killed trials are dead 3 s after the kill: a trial is judged by the interval of the job that held it
    beats = {"OIALR_SEARCH_HEARTBEAT": "0.5"}
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True, env={**os.environ, "OIALR_SEARCH_STORAGE": "", **beats})
    deadline = time.time() + 180
    done = []
    while time.time() < deadline:
        time.sleep(0.5)
        if (tmp_path / "oialr_search.db").exists():
            try:
                done = [r for r in trials(tmp_path, "k") if r["state"] == "COMPLETE"]
            except sqlite3.OperationalError:
                continue
            if len(done) >= 4:
                break
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert len(done) >= 4, "the search did not get going"
    before = {r["number"]: r for r in trials(tmp_path, "k") if r["state"] == "COMPLETE"}
    # Propulate's own checkpoints are never written: every job rebuilds its islands from the database
    assert not list((tmp_path / "oialr_search.work" / "k" / "propulate").glob("job-*/island_*"))
    target = len(before) + 8
    cmd = [*cmd[:2], "4", *cmd[3:8], "resume", "--study", "k", "--budget", str(target)]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, env={**os.environ, "OIALR_SEARCH_STORAGE": "", **beats})
    try:
        deadline = time.time() + 180
        while proc.poll() is None and time.time() < deadline:
            time.sleep(0.2)
            with contextlib.suppress(sqlite3.OperationalError):
                if len([r for r in trials(tmp_path, "k") if r["state"] == "COMPLETE"]) > len(before):
                    break
        # this job's islands were rebuilt from the database, and read: no copy of the study is left in its
        # folder, which a job killed outright never removes
        running = proc.poll() is None
        jobs = list((tmp_path / "oialr_search.work" / "k" / "propulate").glob("job-*"))
        islands = [p.name for job in jobs for p in job.glob("island_*")]
        out, err = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, err[-3000:]
    assert "population rebuilt from" in out and running and len(jobs) == 2 and islands == [], (running, jobs, islands)
    after = {r["number"]: r for r in trials(tmp_path, "k")}
    for number, row in before.items():  # no completed trial lost or changed
        assert after[number]["state"] == "COMPLETE" and after[number]["value"] == row["value"]
    assert sum(r["state"] == "COMPLETE" for r in after.values()) >= target
    assert "RUNNING" not in {r["state"] for r in after.values()}
    assert {r["rank"] for r in after.values()} >= {2, 3}  # the new ranks took part


def test_export_then_train_reproduces_the_trial(tmp_path):
    write_space(tmp_path)
    assert run(["run", "space.yaml", "--study", "e", "--budget", "3"], tmp_path).returncode == 0
    best = run(["best", "--study", "e", "--format", "json"], tmp_path)
    assert best.returncode == 0, best.stderr
    doc = json.loads(best.stdout)
    exp = run(["export", "--study", "e", "-o", "tuned.yaml"], tmp_path)
    assert exp.returncode == 0, exp.stderr
    train = run(["train", "tuned.yaml", "--quiet", "--out", "m.json"], tmp_path)
    assert train.returncode == 0, train.stderr
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["val_loss"] == pytest.approx(doc["val_loss"], rel=1e-6)
    assert doc["config"]["train"]["threads"] >= 1 and doc["config"]["train"]["device"] == "auto"
    for fmt in ("table", "json", "csv"):
        out = run(["trials", "--study", "e", "--format", fmt], tmp_path)
        assert out.returncode == 0 and "oialr.beta" in out.stdout
    listing = run(["studies"], tmp_path)
    assert listing.returncode == 0 and "e" in listing.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "bad.yaml", "--study", "x"], "bad.yaml: params.oialr.beta: low must be below high"),
        (["run", "missing.yaml", "--study", "x"], "missing.yaml: no such search-space file"),
        (["run", "space.yaml", "--study", "x", "--budget", "0"], "--budget: must be at least 1"),
        (["run", "space.yaml", "--study", "x", "--workdir", "bad.yaml"], "bad.yaml is not a folder"),
        (["run", "space.yaml", "--study", "x", "--workdir", "bad.yaml/sub"], "bad.yaml is not a folder"),
        (["run", "space.yaml", "--study", "x", "--workdir", "w" * 300], "File name too long"),
        (["run", "space.yaml", "--study", "x", "--storage", f"sqlite:///{'d' * 300}.db"], "File name too long"),
        (["status", "--study", "x", "--storage", f"sqlite:///{'d' * 300}.db"], "File name too long"),
        (["status", "--study", "nope"], "no such database file"),
        (["resume", "--study", "nope"], "no such database file"),
        (["export", "--study", "nope", "-o", "t.yaml"], "no such database file"),
        (["run", "space.yaml", "--study", "x", "--storage", "sqlite:///no/such/dir/x.db"], "does not exist"),
        (["run", "space.yaml", "--study", ""], "--study '': the name is empty"),
        (["run", "space.yaml", "--study", "../escape"], "the name is a path"),
        (["run", "space.yaml", "--study", "a/b"], "the name is a path"),
        (["run", "space.yaml", "--study", "s" * 300], "is longer than 200 bytes"),
        (["run", "space.yaml", "--study", "x", "--seed", str(10**23)], "--seed 100000000000000000000000: must be"),
        (["run", "space.yaml", "--study", "x", "--storage", "sqlite://"], "an in-memory database would be lost"),
        (["run", "space.yaml", "--study", "x", "--storage", "foo://bar"], "unknown kind of database or driver 'foo'"),
        (["status", "--study", "x", "--storage", "foo://bar"], "unknown kind of database or driver 'foo'"),
        (["export", "--study", "x", "--storage", "foo", "-o", "t.yaml"], "--storage 'foo': not a database URL"),
        (["report", "--study", "x", "--storage", "foo", "-o", "t.html"], "--storage 'foo': not a database URL"),
        (["status", "--study", "x", "--storage", "sqlite:///empty.db"], "this storage has no studies"),
        (["status", "--study", "x", "--storage", "sqlite://"], "this storage has no studies"),
        (["run", "binary.yaml", "--study", "x"], "binary.yaml: not UTF-8 text"),
        (["run", "date.yaml", "--study", "x"], "date.yaml: not valid YAML (day is out of range for month)"),
        (["run", "placed.yaml", "--study", "x"], "placed.yaml: params.train.device: cannot be searched"),
        (["run", "space.yaml", "--study", "x", "--budget", "abc"], "argument --budget: invalid int value: 'abc'"),
        (["trials", "--study", "x", "--format", "xml"], "argument --format: invalid choice: 'xml'"),
        (["run", "space.yaml", "--study", "x", "--set", "model.kwargs.depth=-1"], "space.yaml: with --set "
         "model.kwargs.depth=-1: model.kwargs.depth: must be an integer >= 0, got -1 (every trial would fail"),
        (["run", "space.yaml", "--study", "x", "--set", "model.name=mlpp"], "with --set model.name=mlpp: "
         "model.name: unknown model 'mlpp'"),
        (["run", "space.yaml", "--study", "x", "--set", "model.name=mini_vit"], "space.yaml: params: model.kwargs: "
         "VisionTransformer.__init__() got an unexpected keyword argument 'hidden' (every trial would fail building"),
    ],
)
def test_bad_input_exits_2_with_one_line_and_changes_nothing(tmp_path, args, message):
    write_space(tmp_path)
    (tmp_path / "bad.yaml").write_text("params: {oialr.beta: {type: float, low: 0.5, high: 0.1}}\n")
    (tmp_path / "binary.yaml").write_bytes(b"\xff\xfe\x00bad")
    (tmp_path / "date.yaml").write_text("description: 2024-02-30\n")  # PyYAML builds a date, and fails
    (tmp_path / "placed.yaml").write_text((tmp_path / "space.yaml").read_text().replace(
        "params:", "params:\n  train.device: {type: categorical, choices: [cpu]}"))
    (tmp_path / "empty.db").write_bytes(b"")
    before = sorted(p.name for p in tmp_path.iterdir())
    proc = run(args, tmp_path)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_a_model_every_trial_would_fail_to_build_is_refused_unless_a_searched_value_changes_it(tmp_path):
    from oialr_search.search._study_checks import model_problem

    vit = "  model: {name: mini_vit, kwargs: {embed_dim: 24, depth: 1, num_heads: %s}}\n"
    text = SPACE % {"epochs": 1, "extra": "", "more": ""}
    text = text.replace("  model: {name: mlp, kwargs: {hidden: 24, depth: 1}}\n", vit % 5)
    (tmp_path / "bad.yaml").write_text(text.replace("  model.kwargs.hidden: {type: categorical, choices: [16, 24]}\n",
                                                    ""))
    assert "embed_dim: 24 is not divisible by num_heads=5" in model_problem(load_space(tmp_path / "bad.yaml"))
    searched = text.replace("model.kwargs.hidden: {type: categorical, choices: [16, 24]}",
                            "model.kwargs.num_heads: {type: categorical, choices: [2, 4]}")
    (tmp_path / "searched.yaml").write_text(searched)  # every trial sets num_heads: judged per trial
    assert model_problem(load_space(tmp_path / "searched.yaml")) is None
    (tmp_path / "fine.yaml").write_text(searched.replace("num_heads: 5}", "num_heads: 4}"))
    space = load_space(tmp_path / "fine.yaml")
    assert model_problem(space) is None
    # resume --set: refused with the study and its database as they were
    proc = run(["run", "fine.yaml", "--study", "v", "--budget", "1", "--backend", "optuna"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    db = tmp_path / "oialr_search.db"
    before = db.read_bytes()
    proc = run(["resume", "--study", "v", "--set", "model.kwargs.depth=-1"], tmp_path)
    assert proc.returncode == 2 and "model.kwargs.depth: must be an integer >= 0" in proc.stderr, proc.stderr
    assert db.read_bytes() == before


@pytest.mark.parametrize("args", [["run", "missing.yaml", "--study", "x"], ["run", "--budget", "abc"],
                                  ["resume", "--study", "x", "--storage", "sqlite:///nope.db"]])
def test_bad_input_under_mpiexec_is_said_once(tmp_path, args):
    """Every rank parses the same command line before MPI starts: rank 0 says what is wrong, the others
    exit 2 without repeating it."""
    proc = run(args, tmp_path, ranks=2, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_ranks_that_see_different_files_all_exit_2_and_rank_0_says_why(tmp_path):
    """A rank whose check fails where rank 0's passes (its node sees other files) is neither silent nor left
    to hang the job (found in review: the error was printed by no rank, and the job hung in MPI)."""
    write_space(tmp_path)
    rank = [sys.executable, "-m", "mpi4py", "-m", "oialr_search", "run"]
    cmd = [str(MPIEXEC), "-n", "1", *rank, "space.yaml", "--study", "x", ":", "-n", "1", *rank, "missing.yaml",
           "--study", "x"]
    proc = run_killable(cmd, cwd=tmp_path, timeout=120, env={**os.environ, "OIALR_SEARCH_STORAGE": ""})
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == ["oialr-search run: error: rank 1: missing.yaml: no such search-space "
                                                "file"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["space.yaml"]


@pytest.mark.parametrize(("args", "url", "message"), [
    (["studies"], "foo://x", "oialr-search studies: error: OIALR_SEARCH_STORAGE=foo://x: unknown kind of database"),
    (["run", "space.yaml", "--study", "z"], "sqlite://", "oialr-search: error: OIALR_SEARCH_STORAGE=sqlite://: an "
     "in-memory database"),
    (["resume", "--study", "z"], "sqlite:///nope.db", "oialr-search resume: error: OIALR_SEARCH_STORAGE="
     "sqlite:///nope.db: no such database file")])
def test_a_storage_from_the_environment_is_named_as_such(tmp_path, args, url, message):
    """An error about a storage that OIALR_SEARCH_STORAGE gave names the variable, not a --storage option the
    user never typed (found by a sweep)."""
    write_space(tmp_path)
    proc = run(args, tmp_path, env={"OIALR_SEARCH_STORAGE": url})
    assert proc.returncode == 2 and proc.stderr.startswith(message), proc.stderr


@pytest.mark.parametrize("variable", ["SLURM_PROCID", "PMI_RANK"])
def test_a_task_of_a_launcher_says_its_own_error(tmp_path, variable):
    """Outside an MPI search (srun of one train per task), each task's error is its own: printed (found in
    review: with SLURM_PROCID=1 the error was printed nowhere)."""
    proc = run(["train", "missing.yaml"], tmp_path, env={variable: "1"})
    assert proc.returncode == 2 and "missing.yaml: no such config file" in proc.stderr, proc.stderr


@pytest.mark.parametrize(("variable", "value"), [("OIALR_SEARCH_HEARTBEAT", "10s"), ("OIALR_SEARCH_HEARTBEAT", "0"),
                                               ("OIALR_SEARCH_HEARTBEAT", "1e10"), ("OIALR_SEARCH_HEARTBEAT", "1e-9"),
                                               ("OIALR_SEARCH_COLLECTIVE_TIMEOUT", "nan"),
                                               ("OIALR_SEARCH_COLLECTIVE_TIMEOUT", "1e14")])
@pytest.mark.parametrize("verb", ["run", "resume"])
def test_a_malformed_environment_setting_exits_2_before_anything_is_written(tmp_path, variable, value, verb):
    write_space(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    args = ["run", "space.yaml"] if verb == "run" else ["resume"]
    proc = run([*args, "--study", "x", "--storage", f"sqlite:///{tmp_path}/x.db"], tmp_path, env={variable: value})
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"oialr-search {verb}: error: {variable}={value!r}: expected a number of seconds from 0.1 to 1000000, "
        f"e.g. {variable}={10 if 'HEARTBEAT' in variable else 600}, or leave it unset"]
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_only_a_studys_first_job_tries_the_run_configs_own_values(tmp_path):
    """Every job is counted in the study; one that finds another counted before it (two submissions at
    the same moment, both finding no trial finished) proposes from its own seed, not the run config."""
    from oialr_search.storage import Store

    text = (SPACE % {"epochs": 1, "extra": "", "more": ""}).replace(
        "delay: 0.3}", "delay: 0.3, beta: 0.1, update_frequency: 5}\n  optim: {lr: 5.0e-3}")
    (tmp_path / "space.yaml").write_text(text)
    own = {"oialr.beta": 0.1, "optim.lr": 0.005, "oialr.update_frequency": 5, "model.kwargs.hidden": 24}
    assert load_space(tmp_path / "space.yaml").start_params() == own
    url = f"sqlite:///{tmp_path}/oialr_search.db"
    store = Store(url)
    space = load_space(tmp_path / "space.yaml")
    other = store.create_study(name="second", space=space.to_dict(), space_path=space.path, metric="val_loss",
                               direction="minimize", backend="optuna", seed=0, budget=1)
    assert store.start_job(other) == 0  # a job of that study that counted itself first
    for study in ("first", "second"):
        proc = run(["run", "space.yaml", "--study", study, "--budget", "1", "--backend", "optuna"], tmp_path)
        assert proc.returncode == 0, proc.stderr
    first, second = (json.loads(trials(tmp_path, s)[0]["params"]) for s in ("first", "second"))
    assert first == own and second != own
    jobs = dict(sqlite3.connect(tmp_path / "oialr_search.db").execute("SELECT name, jobs FROM oialr_studies"))
    assert jobs == {"first": 1, "second": 2}
    store.engine.dispose()


def test_a_budget_below_the_finished_trials_is_refused_and_the_stored_one_kept(tmp_path):
    """--budget is the study's total: one below what is finished (a user counting new trials, as Optuna's
    n_trials does) would silently lower the stored budget and run nothing."""
    write_space(tmp_path, epochs=1)
    assert run(["run", "space.yaml", "--study", "s", "--budget", "2"], tmp_path).returncode == 0
    db = tmp_path / "oialr_search.db"
    before = db.read_bytes()
    proc = run(["resume", "--study", "s", "--budget", "1"], tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "oialr-search: error: --budget 1: study 's' has 2 finished trials already (the budget is the study's "
        "total over all its jobs, now 2); give --budget 2 or more, or leave it out to keep 2"]
    assert db.read_bytes() == before
    # run never lowers a stored budget: a job may repeat an older command line (found in review)
    proc = run(["run", "space.yaml", "--study", "s", "--budget", "1"], tmp_path)
    assert proc.returncode == 0 and "run: study 's' keeps its budget of 2" in proc.stdout, proc.stderr
    assert len(trials(tmp_path, "s")) == 2
    proc = run(["resume", "--study", "s", "--budget", "2"], tmp_path)  # a requeued job's repeat: nothing to do
    assert proc.returncode == 0 and "2/2 trials finished" in proc.stdout, proc.stderr
    assert len(trials(tmp_path, "s")) == 2
    # a trial left RUNNING by a killed job is admitted too (the next job resumes it): found by a sweep, where
    # resume --budget 2 then finished 3 of 2
    from oialr_search.storage import Store

    store = Store(f"sqlite:///{db}")
    store.update_study("s", budget=3)  # as a later resume --budget 3 leaves it
    store.engine.dispose()
    # a job repeating its original run --budget 2 must not undo that (found in review)
    proc = run(["run", "space.yaml", "--study", "s", "--budget", "2"], tmp_path)
    assert proc.returncode == 0 and "run: study 's' keeps its budget of 3" in proc.stdout, proc.stderr
    assert len(trials(tmp_path, "s")) == 3
    store = Store(f"sqlite:///{db}")
    store.update_study("s", budget=4)
    store.start_trial(store.get_study("s"), params=json.loads(trials(tmp_path, "s")[0]["params"]), rank=0,
                      island=None, device="cpu")
    store.engine.dispose()
    proc = run(["resume", "--study", "s", "--budget", "3"], tmp_path)
    assert proc.returncode == 2 and "has 3 finished and 1 started trials already" in proc.stderr, proc.stderr
    assert "give --budget 4 or more" in proc.stderr


def test_unknown_study_in_existing_storage(tmp_path):
    write_space(tmp_path)
    assert run(["run", "space.yaml", "--study", "real", "--budget", "1"], tmp_path).returncode == 0
    for verb in (["status"], ["best"], ["trials"], ["resume"]):
        proc = run([*verb, "--study", "ghost"], tmp_path)
        assert proc.returncode == 2 and "no study named 'ghost'" in proc.stderr and "real" in proc.stderr
    changed = write_space(tmp_path, epochs=3, name="space2.yaml")
    proc = run(["run", str(changed), "--study", "real"], tmp_path)
    assert proc.returncode == 2 and "different search space" in proc.stderr


def test_studies_of_an_earlier_release_with_a_name_seed_or_params_now_refused_still_continue(tmp_path, monkeypatch):
    """A name that is a path, a seed above 2³¹ and train.threads under params were accepted before: a study
    stored with them, in a database of the earlier release's schema (v4), continues with the same `run` (a
    requeued job repeats its command, which upgrades the database) and with `resume`."""
    import yaml
    from alembic import command
    from sqlalchemy import create_engine

    from oialr_search.search import SearchRequest, _runner, run_search
    from oialr_search.storage._migrate import _config

    write_space(tmp_path)
    threads = yaml.safe_load((tmp_path / "space.yaml").read_text())
    threads["params"]["train.threads"] = {"type": "categorical", "choices": [1]}
    (tmp_path / "threads.yaml").write_text(yaml.safe_dump(threads))
    url = f"sqlite:///{tmp_path}/oialr_search.db"
    cwd = os.getcwd()
    with monkeypatch.context() as patch:
        patch.setattr(_runner, "new_study_problem", lambda *args: None)  # as an earlier release took them
        patch.chdir(tmp_path)
        for study, seed, space in (("grp/s1", 0, "space.yaml"), ("big_seed", 3_000_000_000, "space.yaml"),
                                   ("threads", 0, "threads.yaml")):
            assert run_search(SearchRequest(study=study, storage=url, space=load_space(tmp_path / space),
                                            backend="optuna", budget=1, seed=seed), quiet=True) == 0
    assert os.getcwd() == cwd
    engine = create_engine(url)
    with engine.begin() as conn:
        command.downgrade(_config(conn), "v4")
    engine.dispose()
    again = run(["run", "space.yaml", "--study", "grp/s1", "--budget", "2"], tmp_path)
    assert again.returncode == 0, again.stderr
    again = run(["run", "space.yaml", "--study", "big_seed", "--seed", "3000000000", "--budget", "2"], tmp_path)
    assert again.returncode == 0, again.stderr
    again = run(["run", "threads.yaml", "--study", "threads", "--budget", "2"], tmp_path)
    assert again.returncode == 0, again.stderr
    resumed = run(["resume", "--study", "threads", "--budget", "3"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    for study, n in (("grp/s1", 2), ("big_seed", 2), ("threads", 3)):
        assert [r["state"] for r in trials(tmp_path, study)] == ["COMPLETE"] * n
    db = sorted(p.name for p in tmp_path.iterdir())
    for args, message in ((["--study", "grp/s2"], "the name is a path"), (["--study", "s", "--seed", "-1"], "--seed"),
                          (["--study", "t2"], "params.train.threads: cannot be searched")):
        space = "threads.yaml" if args[1] == "t2" else "space.yaml"
        new = run(["run", space, *args], tmp_path)  # new studies: refused, nothing written
        assert new.returncode == 2 and message in new.stderr, new.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == db


def test_a_refused_resume_leaves_a_database_that_is_not_ours_byte_for_byte(tmp_path):
    """resume looks the study up read-only: a SQLite file of another program (or an empty one) is not switched
    to WAL, as opening it for writing did."""
    con = sqlite3.connect(tmp_path / "other.db")
    con.execute("CREATE TABLE t (x)")
    con.commit()
    con.close()
    (tmp_path / "empty.db").write_bytes(b"")
    for name in ("other.db", "empty.db"):
        before = (tmp_path / name).read_bytes()
        proc = run(["resume", "--study", "x", "--storage", f"sqlite:///{tmp_path / name}"], tmp_path)
        assert proc.returncode == 2 and "this storage has no studies" in proc.stderr, proc.stderr
        assert (tmp_path / name).read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.db", "other.db"]
