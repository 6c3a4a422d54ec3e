"""launch/slurm_search.sbatch as SLURM runs it, with stand-ins for srun and scontrol (no SLURM here): the
search runs through srun, and the job requeues itself only while the study has work left."""

import os
import sqlite3
import stat
import sys
from pathlib import Path

from .._processes import run_killable
from .test_search_cli import write_space

ROOT = Path(__file__).resolve().parents[2]
SBATCH = ROOT / "launch" / "slurm_search.sbatch"

# srun: drop srun's own options, run the command (one task); scontrol: note what it was asked
SRUN = """#!/usr/bin/env bash
while [[ "$1" == --* ]]; do shift; done
[[ -n "${FAKE_SRUN_SKIP:-}" ]] && exit 0  # the allocation ended before the search took a trial
[[ -n "${FAKE_SRUN_FAIL:-}" ]] && exit "$FAKE_SRUN_FAIL"  # a rank killed (9), a refused command (2)
exec "$@"
"""
SCONTROL = """#!/usr/bin/env bash
echo "$@" >> "$SCONTROL_LOG"
"""


def _job(tmp_path: Path, budget: int, **env: str):
    bin_dir = tmp_path / "slurm-bin"
    bin_dir.mkdir(exist_ok=True)
    for name, text in (("srun", SRUN), ("scontrol", SCONTROL)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(stat.S_IRWXU)
    write_space(tmp_path)
    return run_killable(["bash", str(SBATCH)], cwd=tmp_path, timeout=240, env={
        **os.environ, "PATH": f"{bin_dir}:{Path(sys.executable).parent}:{os.environ['PATH']}",
        "SPACE": "space.yaml", "STUDY": "slurm", "BUDGET": str(budget), "SLURM_JOB_ID": "4242",
        "OIALR_SEARCH_STORAGE": f"sqlite:///{tmp_path}/search.db", "WORKDIR": str(tmp_path / "work"),
        "SCONTROL_LOG": str(tmp_path / "scontrol.log"), "OMP_NUM_THREADS": "1", **env})


def _states(tmp_path: Path) -> list[str]:
    con = sqlite3.connect(tmp_path / "search.db")
    try:
        return [r[0] for r in con.execute("SELECT state FROM oialr_trials ORDER BY number")]
    finally:
        con.close()


def test_a_job_that_spends_the_budget_does_not_requeue_itself(tmp_path):
    proc = _job(tmp_path, 2)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert _states(tmp_path) == ["COMPLETE", "COMPLETE"]
    assert not (tmp_path / "scontrol.log").exists()


def test_a_job_that_leaves_work_requeues_itself(tmp_path):
    """The study exists with budget left (the last allocation ended first): requeue; then a job that
    finishes the budget does not."""
    assert _job(tmp_path, 1).returncode == 0
    proc = _job(tmp_path, 3, FAKE_SRUN_SKIP="1")  # --budget 3 is stored only by the search itself...
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert not (tmp_path / "scontrol.log").exists()  # ...so with its budget of 1 spent, nothing is left
    proc = _job(tmp_path, 3)
    assert proc.returncode == 0 and _states(tmp_path) == ["COMPLETE"] * 3, proc.stderr[-2000:]
    con = sqlite3.connect(tmp_path / "search.db")
    with con:  # as an allocation that ended while trial 3 ran leaves it: RUNNING and released
        con.execute("UPDATE oialr_studies SET budget = 4")
        con.execute("INSERT INTO oialr_trials (study_id, number, state, rank, device, params, started, crashes) "
                    "SELECT study_id, 3, 'RUNNING', 0, 'cpu', params, started, 0 FROM oialr_trials WHERE number = 0")
    con.close()
    proc = _job(tmp_path, 4, FAKE_SRUN_SKIP="1")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "scontrol.log").read_text().split() == ["requeue", "4242"]


def test_a_requeued_job_keeps_the_stored_budget(tmp_path):
    """A requeued run passes no --budget: one changed since the submission (resume --budget) holds (found in
    review: the requeued job's --budget undid it); a new submission with a larger BUDGET still extends."""
    assert _job(tmp_path, 1).returncode == 0
    con = sqlite3.connect(tmp_path / "search.db")
    with con:  # as `oialr-search resume --study slurm --budget 2` leaves it, while the job waits in the queue
        con.execute("UPDATE oialr_studies SET budget = 2")
    con.close()
    proc = _job(tmp_path, 5, SLURM_RESTART_COUNT="1")
    assert proc.returncode == 0 and _states(tmp_path) == ["COMPLETE"] * 2, proc.stderr[-2000:]
    proc = _job(tmp_path, 3)  # a new submission
    assert proc.returncode == 0 and _states(tmp_path) == ["COMPLETE"] * 3, proc.stderr[-2000:]


def test_a_run_that_fails_still_requeues_until_it_fails_three_times_in_a_row(tmp_path):
    """A rank killed mid-trial fails srun: under set -e the job ended without requeueing, and the dead rank's
    trials waited for a job nobody queued (found by a sweep). A command refused at the submission's first
    run is not requeued; on a requeued run a refusal (the database restarting) is a failed run."""
    assert _job(tmp_path, 1).returncode == 0
    con = sqlite3.connect(tmp_path / "search.db")
    with con:
        con.execute("UPDATE oialr_studies SET budget = 3")
    con.close()
    for run in (1, 2, 3):
        proc = _job(tmp_path, 3, FAKE_SRUN_FAIL="9" if run != 2 else "2", SLURM_RESTART_COUNT=str(run))
        assert proc.returncode == (9 if run != 2 else 2)
        requeues = (tmp_path / "scontrol.log").read_text().split().count("requeue")
        assert requeues == min(run, 2), proc.stderr[-2000:]
    assert "the last 3 runs of study slurm failed (exit 9); not requeued" in proc.stderr
    assert (tmp_path / "work" / ".failed-runs-slurm-4242").read_text().split() == ["9", "2", "9"]  # this job's
    proc = _job(tmp_path, 3, SLURM_RESTART_COUNT="4")  # a run that works resets the count
    assert proc.returncode == 0 and _states(tmp_path) == ["COMPLETE"] * 3
    assert not (tmp_path / "work" / ".failed-runs-slurm-4242").exists()
    proc = _job(tmp_path, 4, FAKE_SRUN_FAIL="2")  # a new submission's refused command
    assert proc.returncode == 2 and (tmp_path / "scontrol.log").read_text().split().count("requeue") == 2


def test_a_run_whose_ranks_died_with_the_budget_taken_requeues_for_their_trials(tmp_path):
    """The last trials were in flight when their ranks were killed: every trial of the budget is taken and the
    dead ones' heartbeats are seconds old when the job checks, yet only a next run can resume them (found in
    review)."""
    assert _job(tmp_path, 1).returncode == 0
    con = sqlite3.connect(tmp_path / "search.db")
    with con:
        con.execute("UPDATE oialr_studies SET budget = 2")
        con.execute("INSERT INTO oialr_trials (study_id, number, state, rank, device, params, started, crashes, "
                    "heartbeat) SELECT study_id, 1, 'RUNNING', 0, 'cpu', params, started, 0, "
                    "strftime('%Y-%m-%d %H:%M:%f', 'now') FROM oialr_trials WHERE number = 0")
    con.close()
    proc = _job(tmp_path, 2, FAKE_SRUN_FAIL="137", SLURM_RESTART_COUNT="1")
    assert proc.returncode == 137
    assert (tmp_path / "scontrol.log").read_text().split() == ["requeue", "4242"], proc.stderr[-2000:]


def test_a_failed_run_requeues_when_the_check_cannot_reach_the_database_but_not_before_the_study_exists(tmp_path):
    """The check failing after a failed run (the database down): requeue, within the count. No study yet (the
    submission's first run failed before making it): a requeued run would drop --budget and make the study
    with the default budget instead of $BUDGET (found in review), so no requeue."""
    proc = _job(tmp_path, 7, FAKE_SRUN_FAIL="1")  # no database at all yet
    assert proc.returncode == 1 and "no study 'slurm' yet (its first run failed first); not requeued" in proc.stderr
    assert not (tmp_path / "scontrol.log").exists()
    (tmp_path / "search.db").write_bytes(b"not a database" * 100)
    proc = _job(tmp_path, 7, FAKE_SRUN_FAIL="1", SLURM_RESTART_COUNT="1")
    assert proc.returncode == 1 and "the requeue check failed: " in proc.stderr and "Traceback" not in proc.stderr
    assert (tmp_path / "scontrol.log").read_text().split() == ["requeue", "4242"]


def test_a_failed_run_that_cannot_count_itself_is_not_requeued(tmp_path):
    """FAILED_RUNS_MAX needs the count: a WORKDIR that cannot be written (full, read-only) would requeue a job
    failing every run for ever (found in review)."""
    assert _job(tmp_path, 1).returncode == 0
    (tmp_path / "file").write_text("")
    proc = _job(tmp_path, 3, FAKE_SRUN_FAIL="9", SLURM_RESTART_COUNT="1", WORKDIR=str(tmp_path / "file" / "work"))
    assert proc.returncode == 9 and "cannot be written" in proc.stderr and "not requeued" in proc.stderr
    assert not (tmp_path / "scontrol.log").exists()


def test_search_sh_takes_options_with_or_without_a_rank_count(tmp_path):
    """`launch/search.sh SPACE STUDY --budget 3` ran `mpiexec -n --budget` (found by a sweep)."""
    import subprocess

    fake = tmp_path / "mpiexec"
    fake.write_text('#!/usr/bin/env bash\nprintf "%s\\n" "$*"\n')
    fake.chmod(stat.S_IRWXU)
    script, env = ROOT / "launch" / "search.sh", {**os.environ, "MPIEXEC": str(fake), "PYTHON": "py"}

    def launched(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", str(script), "s.yaml", "st", *args], capture_output=True, text=True, env=env,
                              timeout=60)

    for args, ranks in ((["--budget", "3"], "2"), (["4", "--", "--budget", "3"], "4"), (["--", "--budget", "3"], "2"),
                        (["08", "--budget", "3"], "8")):
        proc = launched(*args)
        assert proc.returncode == 0, proc.stderr
        command = f"-n {ranks} py -m mpi4py -m oialr_search run s.yaml --study st --budget 3"
        assert proc.stdout.splitlines()[-1] == command
    for ranks in ("four", "-1", "0"):
        proc = launched(ranks, "--", "--budget", "3")
        assert proc.returncode == 2 and not proc.stdout and "launch/search.sh: RANKS must be" in proc.stderr
