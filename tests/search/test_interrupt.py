"""Ctrl-C ends the whole search: exit code 130 and one line, the running trials stay RUNNING with the epochs
they reported (the next job resumes them), no completed trial is lost; under mpiexec every rank ends."""

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.search.test_search_cli import MPIEXEC, write_space

TIMEOUT = 180  # to get going; the interrupt itself must end the job within seconds


def rows(folder: Path, study: str) -> list[dict]:
    """The study's trials with how many epochs each has stored; [] while the database is not there yet."""
    if not (folder / "oialr_search.db").exists():
        return []
    conn = sqlite3.connect(folder / "oialr_search.db", timeout=10)
    conn.row_factory = sqlite3.Row
    try:
        found = conn.execute("SELECT t.number, t.state, t.value, t.last_epoch, t.error, t.heartbeat, t.crashes, "
                             "(SELECT count(*) FROM oialr_trial_epochs e WHERE e.trial_id = t.id) AS epochs "
                             "FROM oialr_trials t JOIN "
                             "oialr_studies s ON s.id = t.study_id WHERE s.name = ? ORDER BY t.number",
                             (study,)).fetchall()
    except sqlite3.OperationalError:  # the schema is being made
        return []
    finally:
        conn.close()
    return [dict(r) for r in found]


def processes_with(token: str) -> list[int]:
    """Processes whose command line holds ``token`` (the test's unique study name): the job's ranks, which
    MPICH starts in process groups of their own."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if token.encode() in (entry / "cmdline").read_bytes():
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


def start(cmd: list[str], folder: Path, *, stacks: bool = False) -> subprocess.Popen:
    """``stacks``: a process that outlives its Ctrl-C prints every thread's stack when ``interrupt`` gives up
    on it (faulthandler on SIGABRT; not under mpiexec, whose ranks abort on purpose)."""
    # one torch thread a process, as the other search tests: two spinning OpenMP threads per rank on a loaded
    # 2-core machine (the other test worker) made the search 6x slower to get going
    env = {**os.environ, "OIALR_SEARCH_STORAGE": "", "OMP_NUM_THREADS": "1",
           **({"PYTHONFAULTHANDLER": "1"} if stacks else {})}
    # SIGINT as a terminal's foreground job has it: a suite started in the background (``bash launch/test.sh &``)
    # ignores SIGINT, children inherit that, and Python then installs no KeyboardInterrupt handler at all
    return subprocess.Popen(cmd, cwd=folder, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, env=env,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def wait_for(proc: subprocess.Popen, folder: Path, study: str, ready) -> list[dict]:  # noqa: ANN001
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        time.sleep(0.2)
        found = rows(folder, study)
        if ready(found):
            return found
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"the search ended before the interrupt ({proc.returncode}):\n{out[-2000:]}\n{err[-2000:]}")
    os.killpg(proc.pid, signal.SIGKILL)
    pytest.fail("the search did not get going")


def interrupt(proc: subprocess.Popen, token: str, limit: float) -> tuple[str, str, float]:
    """Ctrl-C as a terminal sends it (to the whole foreground process group); the job must end by itself."""
    sent = time.monotonic()
    os.killpg(proc.pid, signal.SIGINT)
    try:
        out, err = proc.communicate(timeout=limit)
    except subprocess.TimeoutExpired:
        # where it is stuck, for the failure message (see start's stacks)
        os.killpg(proc.pid, signal.SIGABRT)
        time.sleep(2)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        for pid in processes_with(token):
            os.kill(pid, signal.SIGKILL)
        out, err = proc.communicate()
        stacks = err.partition("Extension modules")[0]  # faulthandler's module list would crowd the stacks out
        pytest.fail(f"still running {limit}s after Ctrl-C:\n{out[-2000:]}\n{stacks[-8000:]}")
    return out, err, time.monotonic() - sent


def check_kept(before: list[dict], after: list[dict]) -> None:
    """Completed trials unchanged; the running ones still RUNNING (or completed just before the signal), none
    marked FAILED or INTERRUPTED, each with at least the epochs it had stored."""
    now = {r["number"]: r for r in after}
    for r in before:
        if r["state"] == "COMPLETE":
            assert now[r["number"]] == r
        else:
            assert now[r["number"]]["state"] in ("RUNNING", "COMPLETE"), now[r["number"]]
            assert now[r["number"]]["epochs"] >= r["epochs"]
    assert {r["state"] for r in after} <= {"RUNNING", "COMPLETE"}, after
    assert any(r["state"] == "RUNNING" for r in after), after
    for r in after:
        if r["state"] == "RUNNING":
            assert r["epochs"] == (r["last_epoch"] or 0)  # what it reported is stored, up to the interrupt


def test_ctrl_c_ends_a_one_process_search_with_130_and_one_line(tmp_path):
    write_space(tmp_path, epochs=300)  # a few seconds a trial: epochs are stored once a second
    study = f"ctrl-c-{os.getpid()}"
    proc = start([sys.executable, "-m", "oialr_search", "run", "space.yaml", "--study", study, "--budget", "50",
                  "--backend", "optuna"], tmp_path, stacks=True)
    before = wait_for(proc, tmp_path, study, lambda found: any(r["state"] == "COMPLETE" for r in found) and any(
        r["state"] == "RUNNING" and r["epochs"] for r in found))
    out, err, seconds = interrupt(proc, study, 60)
    assert proc.returncode == 130, err[-3000:]
    assert err.splitlines() == ["oialr-search: interrupted"], err[-3000:]
    assert seconds < 15, f"{seconds:.1f}s from Ctrl-C to the exit"
    after = rows(tmp_path, study)
    check_kept(before, after)
    # released, as on preemption: the next job resumes it at once and counts no death of its run
    assert all(r["heartbeat"] is None and r["crashes"] == 0 for r in after if r["state"] == "RUNNING"), after


@pytest.mark.parametrize("launch", [["-m", "mpi4py"], []], ids=["python -m mpi4py", "python"])
def test_ctrl_c_ends_every_rank_under_mpiexec(tmp_path, launch):
    if not MPIEXEC.exists():
        pytest.fail(f"{MPIEXEC} missing: install the package with the [mpich] extra (launch/test.sh does)")
    write_space(tmp_path, epochs=300)  # a few seconds a trial: epochs are stored once a second
    study = f"ctrl-c-mpi-{os.getpid()}-{len(launch)}"
    proc = start([str(MPIEXEC), "-n", "2", sys.executable, *launch, "-m", "oialr_search", "run", "space.yaml",
                  "--study", study, "--budget", "50"], tmp_path)
    before = wait_for(proc, tmp_path, study, lambda found: sum(r["state"] == "RUNNING" and r["epochs"] > 0
                                                               for r in found) == 2)
    out, err, seconds = interrupt(proc, study, 60)
    assert proc.returncode == 130, err[-3000:]
    assert "oialr-search: interrupted" in err.splitlines(), err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    assert "propulate on 2 rank(s)" in out
    time.sleep(0.5)
    assert processes_with(study) == []  # no rank left behind
    check_kept(before, rows(tmp_path, study))
    # nor this job's Propulate folder (found by a sweep: one was left per interrupted job)
    assert list((tmp_path / "oialr_search.work" / study / "propulate").glob("job-*")) == []
