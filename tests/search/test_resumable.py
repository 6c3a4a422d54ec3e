"""Searches that survive their jobs: trials checkpoint as they run, a job that is killed or preempted
leaves them resumable, the next job resumes them where they were, and jobs share a study safely."""

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch

from oialr_search.training import Trainer, config_from_dict

from .test_search_cli import MPIEXEC, run, trials

SPACE = """\
base:
  model: {name: mlp, kwargs: {hidden: 256, depth: 2}}
  data: {name: digits, val_fraction: 0.2}
  oialr: {keep_last_layer: false, delay: 0.3}
  train: {epochs: 30, batch_size: 32}
objective: {metric: val_loss}
params:
  oialr.beta: {type: float, low: 0.05, high: 0.5, log: true}
  optim.lr: {type: float, low: 1.0e-3, high: 1.0e-2, log: true}
"""
FAST_BEATS = {"OIALR_SEARCH_HEARTBEAT": "0.5"}  # grace period 3 s


def _start(tmp_path, study, budget, *extra):
    cmd = [str(MPIEXEC), "-n", "2", sys.executable, "-m", "mpi4py", "-m", "oialr_search", "run", "space.yaml",
           "--study", study, "--budget", str(budget), *extra]
    return subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True,
                            env={**os.environ, "OIALR_SEARCH_STORAGE": "", "OMP_NUM_THREADS": "1", **FAST_BEATS})


def _wait_for_epochs(tmp_path, study, proc, epochs=3, timeout=180):
    """Until two trials are RUNNING past ``epochs`` epochs."""
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
        try:
            rows = trials(tmp_path, study)
        except sqlite3.OperationalError:
            continue
        if sum(r["state"] == "RUNNING" and (r["last_epoch"] or 0) >= epochs for r in rows) >= 2:
            return
    os.killpg(proc.pid, signal.SIGKILL)
    pytest.fail(f"no two trials got past epoch {epochs}: {proc.communicate()[1][-2000:]}")


def _uninterrupted(row):
    config = json.loads(row["config"])
    config["train"]["device"] = "cpu"
    torch.set_num_threads(config["train"]["threads"])
    return Trainer(config_from_dict(config), log=None).fit()


def _epochs(tmp_path, trial_number, study, *, seconds=False):
    """The trial's stored epochs in order (with ``seconds``: (epoch, its measured seconds) pairs)."""
    con = sqlite3.connect(tmp_path / "oialr_search.db")
    rows = con.execute("SELECT e.epoch, e.seconds FROM oialr_trial_epochs e JOIN oialr_trials t ON t.id = e.trial_id "
                       "JOIN oialr_studies s ON s.id = t.study_id WHERE s.name = ? AND t.number = ? "
                       "ORDER BY e.epoch", (study, trial_number)).fetchall()
    con.close()
    return rows if seconds else [r[0] for r in rows]


def test_sigterm_checkpoints_running_trials_and_the_next_job_resumes_them(tmp_path):
    (tmp_path / "space.yaml").write_text(SPACE)
    proc = _start(tmp_path, "t", 6)
    _wait_for_epochs(tmp_path, "t", proc)
    start = time.time()
    os.killpg(proc.pid, signal.SIGTERM)  # as scancel / SLURM's --signal: every process of the job
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-3000:]
    assert time.time() - start < 30
    stopped = [r for r in trials(tmp_path, "t") if r["state"] == "RUNNING"]
    assert len(stopped) == 2 and all(r["heartbeat"] is None for r in stopped)  # released: dead at once
    folder = tmp_path / "oialr_search.work" / "t" / "trials"
    assert {p.name for p in folder.iterdir()} == {f"trial_{r['number']}.ckpt" for r in stopped}
    reached = {r["number"]: r["last_epoch"] for r in stopped}
    listing = run(["studies"], tmp_path).stdout.splitlines()  # stopped, not running, as status counts them
    start = {name: listing[0].index(name) for name in ("running", "stopped", "interrupted")}
    cell = {name: listing[1][start[name]:end].strip() for name, end in (("running", start["stopped"]),
                                                                       ("stopped", start["interrupted"]))}
    assert cell == {"running": "0", "stopped": "2"}, listing
    kept, corrupt = sorted(reached)
    (folder / f"trial_{corrupt}.ckpt").write_bytes(b"damaged")  # restarts from scratch, with a message
    # epoch: its measured seconds (the values of a run from scratch are the same on CPU; its timings are not)
    before = {n: dict(_epochs(tmp_path, n, "t", seconds=True)) for n in (kept, corrupt)}

    resumed = run(["resume", "--study", "t"], tmp_path, ranks=2, env={**FAST_BEATS, "OMP_NUM_THREADS": "1"})
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming trial {kept} of an earlier job from epoch {reached[kept]}" in resumed.stdout
    assert "unreadable checkpoint" in resumed.stderr and "restarts from scratch" in resumed.stderr
    rows = {r["number"]: r for r in trials(tmp_path, "t")}
    assert len(rows) == 6 and all(r["state"] == "COMPLETE" for r in rows.values())
    for number in rows:
        assert _epochs(tmp_path, number, "t") == list(range(1, 31))  # each epoch once, the curve continued
    assert not list(folder.iterdir())  # checkpoints of finished trials are deleted
    after = {n: dict(_epochs(tmp_path, n, "t", seconds=True)) for n in (kept, corrupt)}
    assert all(after[kept][e] == before[kept][e] for e in before[kept])  # resumed: the dead run's epochs stay
    # restarted: the new run's curve, not two runs joined
    assert before[corrupt] and all(after[corrupt][e] != before[corrupt][e] for e in before[corrupt])
    for number in (kept, corrupt):  # exactly what an uninterrupted run of the same config gives
        assert rows[number]["value"] == pytest.approx(_uninterrupted(rows[number]).val_loss, rel=1e-9, abs=1e-12)


def _catches(pid: int, sig: int) -> bool:
    """Whether process ``pid`` has a handler for ``sig`` (its SigCgt mask in /proc)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    mask = next(int(line.split()[1], 16) for line in status.splitlines() if line.startswith("SigCgt:"))
    return bool(mask >> (sig - 1) & 1)


def test_a_sigterm_while_the_job_starts_up_ends_it_with_0_not_143(tmp_path):
    """SLURM may preempt a job in its first seconds, while torch loads: that ended it with 143, a failed run
    to the SLURM template (found in a sweep). Now the signal is kept, no trial is taken, and the job exits 0."""
    (tmp_path / "space.yaml").write_text(SPACE)
    proc = subprocess.Popen([sys.executable, "-m", "oialr_search", "run", "space.yaml", "--study", "early",
                             "--budget", "2", "--backend", "optuna"], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "OIALR_SEARCH_STORAGE": "",
                                                                    "OMP_NUM_THREADS": "1"})
    deadline = time.time() + 60
    while not _catches(proc.pid, signal.SIGTERM) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    # before the study is prepared: the search's own handler (installed after that) is not what caught it
    assert not (tmp_path / "oialr_search.db").exists()
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-3000:]
    assert "SIGTERM: checkpointing the running trial" in err and trials(tmp_path, "early") == []


def test_the_early_handlers_are_undone_after_the_command():
    """run and resume called in-process (a notebook, these tests) leave the process's handlers as they were."""
    from oialr_search.search._preemption import StopRequest, early_signals_held

    before = signal.getsignal(signal.SIGTERM)
    with early_signals_held():
        assert signal.getsignal(signal.SIGTERM) is not before
        os.kill(os.getpid(), signal.SIGTERM)  # held, not fatal
        stop = StopRequest()
        stop.install()
        assert stop() and stop.signal == signal.SIGTERM
        stop.restore()
    assert signal.getsignal(signal.SIGTERM) is before


def test_a_killed_job_loses_at_most_an_epoch_per_trial(tmp_path):
    (tmp_path / "space.yaml").write_text(SPACE)
    proc = _start(tmp_path, "k", 5)
    _wait_for_epochs(tmp_path, "k", proc)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    before = {r["number"]: r for r in trials(tmp_path, "k")}
    running = {n: r["last_epoch"] for n, r in before.items() if r["state"] == "RUNNING"}
    assert len(running) == 2
    resumed = run(["resume", "--study", "k"], tmp_path, ranks=2, env={**FAST_BEATS, "OMP_NUM_THREADS": "1"})
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    after = {r["number"]: r for r in trials(tmp_path, "k")}
    assert len(after) == 5 and {r["state"] for r in after.values()} == {"COMPLETE"}
    for number, row in before.items():  # nothing completed lost or changed
        if row["state"] == "COMPLETE":
            assert after[number]["value"] == row["value"]
    for number, epoch in running.items():  # resumed from the epoch it had reached (checkpoint every epoch)
        assert f"resuming trial {number} of an earlier job from epoch {epoch}" in resumed.stdout
        assert _epochs(tmp_path, number, "k") == list(range(1, 31))
        assert after[number]["value"] == pytest.approx(_uninterrupted(after[number]).val_loss, rel=1e-9, abs=1e-12)


def test_two_jobs_share_a_study(tmp_path):
    """Propulate on 2 ranks and Optuna in 1 process at once: no live trial is taken for dead, the budget
    is met exactly, nothing is lost."""
    (tmp_path / "space.yaml").write_text(SPACE.replace("epochs: 30", "epochs: 8"))
    first = _start(tmp_path, "both", 10, "--backend", "propulate")
    time.sleep(3)
    second = run(["run", "space.yaml", "--study", "both", "--budget", "10", "--backend", "optuna"], tmp_path,
                 env={**FAST_BEATS, "OMP_NUM_THREADS": "1"}, timeout=300)
    out, err = first.communicate(timeout=300)
    assert first.returncode == 0, err[-3000:]
    assert second.returncode == 0, second.stderr[-3000:]
    rows = trials(tmp_path, "both")
    assert len(rows) == 10 and [r["number"] for r in rows] == list(range(10))
    assert {r["state"] for r in rows} == {"COMPLETE"}
    assert {r["rank"] for r in rows} >= {0, 1}
    assert "resuming" not in out + second.stdout  # no live trial was taken for a dead one


def test_a_transient_storage_error_at_the_end_leaves_the_trial_resumable(tmp_path, monkeypatch, capsys):
    """A lock timeout when storing the outcome: the trial is released with its checkpoint, and the job's
    own drain resumes it (replaying its epochs) and stores it, instead of storing it FAILED."""
    from oialr_search.search import SearchRequest, load_space, run_search
    from oialr_search.storage import Store

    (tmp_path / "space.yaml").write_text(SPACE.replace("epochs: 30", "epochs: 3").replace("hidden: 256", "hidden: 32"))
    original, failed = Store.finish_trial, []

    def flaky(self, trial_id, **kw):
        if not failed:
            failed.append(trial_id)
            raise RuntimeError("storage: transaction rolled back") from sqlite3.OperationalError("database is locked")
        return original(self, trial_id, **kw)

    monkeypatch.setattr(Store, "finish_trial", flaky)
    url = f"sqlite:///{tmp_path}/oialr_search.db"
    req = SearchRequest(study="t", storage=url, space=load_space(tmp_path / "space.yaml"), backend="optuna", budget=2)
    assert run_search(req, quiet=True) == 0
    err = capsys.readouterr().err
    assert "is left resumable from its checkpoint" in err
    rows = trials(tmp_path, "t")
    assert [r["state"] for r in rows] == ["COMPLETE", "COMPLETE"] and rows[0]["id"] == failed[0]
    assert _epochs(tmp_path, 0, "t") == [1, 2, 3]


def test_a_busy_database_during_a_trials_epochs_does_not_fail_it(tmp_path, monkeypatch, capsys):
    """A lock held past the busy timeout while a trial stores an epoch (or its pruner reads the study's):
    the trial goes on, its epochs are stored later, and nothing is FAILED (a sweep found both trials of a
    2-rank job FAILED for good by a 75-s lock)."""
    from oialr_search.search import SearchRequest, load_space, run_search
    from oialr_search.storage import Store

    space = SPACE.replace("epochs: 30", "epochs: 3").replace("hidden: 256", "hidden: 32")
    (tmp_path / "space.yaml").write_text(space + "pruner: {type: median, min_epochs: 1}\n")
    locked = RuntimeError("storage: no write lock")
    locked.__cause__ = sqlite3.OperationalError("database is locked")
    calls = {"report_epochs": 0, "epoch_values": 0}

    def flaky(name):
        original = getattr(Store, name)

        def method(self, *args, **kw):
            calls[name] += 1
            if calls[name] <= 2:
                raise locked
            return original(self, *args, **kw)
        return method

    for name in calls:
        monkeypatch.setattr(Store, name, flaky(name))
    url = f"sqlite:///{tmp_path}/oialr_search.db"
    req = SearchRequest(study="t", storage=url, space=load_space(tmp_path / "space.yaml"), backend="optuna", budget=2)
    assert run_search(req, quiet=True) == 0
    err = capsys.readouterr().err
    assert "storing its epochs failed (storage: no write lock); they are kept and stored later" in err
    assert "the pruner could not read the study's epoch" in err
    rows = trials(tmp_path, "t")
    assert rows[0]["state"] == "COMPLETE" and rows[1]["state"] in ("COMPLETE", "PRUNED")
    assert _epochs(tmp_path, 0, "t") == [1, 2, 3]


def test_only_storage_errors_that_pass_are_waited_out():
    """A busy or locked database and a lost connection pass; a missing table or a read-only file does not,
    and a trial must not train on to its end with nothing stored (found in review)."""
    from oialr_search.storage import transient

    def raised(sql: str, con: sqlite3.Connection) -> RuntimeError:
        try:
            con.execute(sql)
        except sqlite3.Error as exc:
            error = RuntimeError("storage: write failed")
            error.__cause__ = exc
            return error
        raise AssertionError(sql)

    assert not transient(raised("SELECT * FROM nowhere", sqlite3.connect(":memory:")))
    with tempfile.TemporaryDirectory() as folder:
        path = f"{folder}/db.sqlite"
        holder = sqlite3.connect(path, isolation_level=None)
        holder.execute("CREATE TABLE t (x)")
        holder.execute("BEGIN EXCLUSIVE")
        waiter = sqlite3.connect(path, timeout=0.05)
        assert transient(raised("INSERT INTO t VALUES (1)", waiter))  # database is locked: SQLITE_BUSY
        holder.execute("ROLLBACK")
        holder.close()
        waiter.close()
    def postgres(name: str, attribute: str, code: str | None) -> RuntimeError:
        error = RuntimeError("storage: read failed")
        error.__cause__ = type(name, (Exception,), {attribute: code})("from the server")
        return error

    for attribute in ("pgcode", "sqlstate"):  # psycopg2, psycopg 3
        for code, passes in ((None, True), ("08006", True), ("40001", True), ("40P01", True), ("55P03", True),
                             ("57P01", True), ("53300", True), ("53100", False), ("42P01", False)):
            assert transient(postgres("OperationalError", attribute, code)) == passes, (attribute, code)
    assert not transient(postgres("ProgrammingError", "pgcode", None))  # the client refused a value
    invalidated = RuntimeError("storage: write failed")
    invalidated.__cause__ = type("DBAPIError", (Exception,), {"connection_invalidated": True})()
    assert transient(invalidated)


def test_a_stopped_trial_resumes_on_no_more_threads_than_the_ranks_share(tmp_path, capsys):
    """Started by a one-rank job on 2 threads, resumed by a job whose ranks have 1 core each: 2 threads would
    oversubscribe the cores (a sweep measured 70x slower epochs)."""
    from oialr_search.search import load_space
    from oialr_search.search._objective import run_trial

    (tmp_path / "space.yaml").write_text(SPACE.replace("epochs: 30", "epochs: 1").replace("hidden: 256", "hidden: 8"))
    space = load_space(tmp_path / "space.yaml")
    params = {"oialr.beta": 0.1, "optim.lr": 0.005}
    before = torch.get_num_threads()
    try:
        for stored, share, used in ((2, 1, 1), (1, 2, 1)):
            config = space.trial_config(params, threads=stored)
            outcome = run_trial(space, params, device="cpu", threads=share, config=config)
            assert outcome.state == "COMPLETE" and torch.get_num_threads() == used
    finally:
        torch.set_num_threads(before)
    err = capsys.readouterr().err
    assert err.count("a stopped trial that ran on 2 threads resumes on 1, this rank's share of the cores") == 1


def test_a_trial_that_keeps_killing_its_runs_is_failed_not_resumed_forever(tmp_path, capsys):
    """A trial whose runs died holding it more than MAX_CRASHES times (it runs the node out of memory, say)
    is FAILED with the reason by the next job, which goes on with the budget, instead of dying on it too."""
    from oialr_search.search import SearchRequest, load_space, run_search
    from oialr_search.search._execution import MAX_CRASHES

    (tmp_path / "space.yaml").write_text(SPACE.replace("epochs: 30", "epochs: 2").replace("hidden: 256", "hidden: 32"))
    url = f"sqlite:///{tmp_path}/oialr_search.db"
    assert run_search(SearchRequest(study="t", storage=url, space=load_space(tmp_path / "space.yaml"),
                                    backend="optuna", budget=1), quiet=True) == 0
    con = sqlite3.connect(tmp_path / "oialr_search.db")
    with con:  # as a job leaves it when the trial killed it for the MAX_CRASHES + 1st time
        con.execute("UPDATE oialr_trials SET state = 'RUNNING', heartbeat = '2000-01-01 00:00:00.000000', "
                    "crashes = ?, finished = NULL WHERE number = 0", (MAX_CRASHES,))
    con.close()
    assert run_search(SearchRequest(study="t", storage=url, backend="optuna", budget=2), quiet=True) == 0
    rows = trials(tmp_path, "t")
    assert [r["state"] for r in rows] == ["FAILED", "COMPLETE"], rows
    assert rows[0]["crashes"] == MAX_CRASHES + 1 and rows[0]["error"].startswith("crashed: ")
    assert f"trial 0: crashed: {MAX_CRASHES + 1} runs" in capsys.readouterr().err


def test_jobs_that_share_a_study_get_their_own_sampler_seeds():
    """Two jobs of one study at once with the same --seed (a job array; a second allocation while the first
    runs) must not propose the same params; one job alone, or the same array task again, is reproducible;
    every seed is one numpy takes (below 2³²), whatever the task id or --seed."""
    from oialr_search.search._runner import job_seed

    alone = job_seed(0, 0, 0, {})
    assert alone == job_seed(0, 0, 0, {}) == 0  # the seed as given on a fresh study
    tasks = [job_seed(0, 0, 0, {"SLURM_ARRAY_TASK_ID": str(t)}) for t in range(1000)]
    assert len(set(tasks)) == 1000 and alone not in tasks
    assert tasks[7] == job_seed(0, 0, 0, {"SLURM_ARRAY_TASK_ID": "7"})
    assert job_seed(0, 4, 2, {}) != job_seed(0, 4, 0, {})  # a second job joins while the first runs 2 trials
    assert job_seed(0, 4, 0, {}) != alone  # resumed later: other seeds than the first run
    # two submissions of one script at the same moment: both find 0 trials, the database counts them apart
    assert len({job_seed(0, 0, 0, {}, job=j) for j in range(1000)}) == 1000
    seeds = tasks + [job_seed(2**40, 3, 0, {}), job_seed(-5, 0, 1, {}), job_seed(2**31, 10**6, 10**6, {})]
    assert all(0 <= s < 2**32 for s in seeds)


def test_a_job_started_right_after_a_kill_resumes_the_trial_that_still_looks_alive(tmp_path):
    """The next job starts before the killed trial's heartbeat is stale (a requeue seconds after the kill): it
    watches the trial, and once the trial has not beaten for the grace period it resumes it, instead of
    ending at once with 'done: 0 complete' and the trial RUNNING for good (found by a sweep; the SLURM
    template's requeue check then left the study unfinished)."""
    (tmp_path / "space.yaml").write_text(SPACE)
    slow_beats = {"OIALR_SEARCH_STORAGE": "", "OMP_NUM_THREADS": "1", "OIALR_SEARCH_HEARTBEAT": "3"}  # grace 18 s
    proc = subprocess.Popen([sys.executable, "-m", "oialr_search", "run", "space.yaml", "--study", "d", "--budget",
                             "1", "--backend", "optuna"], cwd=tmp_path, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True, env={**os.environ, **slow_beats})
    deadline = time.time() + 180
    while time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
        try:
            if any(r["state"] == "RUNNING" and (r["last_epoch"] or 0) >= 2 for r in trials(tmp_path, "d")):
                break
        except sqlite3.OperationalError:
            continue
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    resumed = run(["resume", "--study", "d"], tmp_path, env=slow_beats)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "trial 0 stopped beating" in resumed.stdout and "resuming trial 0 of an earlier job" in resumed.stdout
    assert [r["state"] for r in trials(tmp_path, "d")] == ["COMPLETE"]


def test_a_job_with_a_shorter_heartbeat_leaves_the_live_trials_of_a_slower_beating_job_alone(tmp_path):
    """A trial is judged by the grace period of the job that holds it (its deadline, v7), not by the looking
    job's: a job with OIALR_SEARCH_HEARTBEAT=0.2 (grace 1.2 s) beside one that beats every 4 s took the other's
    live trial over between two of its beats, and the other job's run of it was dropped."""
    (tmp_path / "space.yaml").write_text(SPACE)
    slow = subprocess.Popen([sys.executable, "-m", "oialr_search", "run", "space.yaml", "--study", "d", "--budget",
                             "2", "--backend", "optuna"], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True,
                            env={**os.environ, "OIALR_SEARCH_STORAGE": "", "OMP_NUM_THREADS": "1",
                                 "OIALR_SEARCH_HEARTBEAT": "4"})
    try:
        deadline = time.time() + 180
        while time.time() < deadline and proc_alive(slow):
            time.sleep(0.2)
            with contextlib.suppress(sqlite3.OperationalError):
                if any(r["state"] == "RUNNING" and (r["last_epoch"] or 0) >= 1 for r in trials(tmp_path, "d")):
                    break
        time.sleep(2)  # the trial's heartbeat is now older than the fast job's grace period
        assert [r["state"] for r in trials(tmp_path, "d")] == ["RUNNING"]  # (else the test proves nothing)
        fast = run(["resume", "--study", "d"], tmp_path, env={"OIALR_SEARCH_HEARTBEAT": "0.2"})
        out, err = slow.communicate(timeout=180)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(slow.pid, signal.SIGKILL)
    assert fast.returncode == 0 and slow.returncode == 0, (fast.stderr[-2000:], err[-2000:])
    assert "resuming trial 0" not in fast.stdout and "taken over" not in err
    rows = trials(tmp_path, "d")
    assert [r["state"] for r in rows] == ["COMPLETE", "COMPLETE"] and rows[0]["crashes"] == 0


def proc_alive(proc: subprocess.Popen) -> bool:
    return proc.poll() is None
