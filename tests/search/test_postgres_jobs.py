"""Two search jobs on one study in one PostgreSQL database, at the same time (as two SLURM jobs would
be): together they run exactly the budget, with unique trial numbers."""

import subprocess
import sys

from sqlalchemy import create_engine, text

from tests.search.test_search_cli import write_space


def _start(args: list[str], cwd) -> subprocess.Popen:  # noqa: ANN001
    return subprocess.Popen([sys.executable, "-m", "oialr_search", *args], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def test_two_jobs_share_one_study_and_meet_the_budget_exactly(tmp_path, postgres_schema_url):
    write_space(tmp_path)
    args = ["run", "space.yaml", "--study", "s", "--storage", postgres_schema_url, "--backend", "optuna",
            "--budget", "6"]
    jobs = [_start(args, tmp_path) for _ in range(2)]
    outputs = []
    try:
        for job in jobs:
            outputs.append(job.communicate(timeout=400))
    finally:
        for job in jobs:
            if job.poll() is None:
                job.kill()
                job.communicate()
    for job, (out, err) in zip(jobs, outputs, strict=True):
        assert job.returncode == 0, f"{out[-2000:]}\n{err[-3000:]}"
    engine = create_engine(postgres_schema_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT t.number, t.state FROM oialr_trials t JOIN oialr_studies s "
                                     "ON s.id = t.study_id WHERE s.name = 's' ORDER BY t.number")).all()
    finally:
        engine.dispose()
    assert [r.number for r in rows] == list(range(6))
    assert [r.state for r in rows] == ["COMPLETE"] * 6
