"""``oialr-search status --watch [SECONDS]``: refresh until the study's budget is spent."""

import os
import pty
import signal
import sqlite3
import subprocess
import sys
import time

from ._study import SINGLE, cli, search, write_space

CLEAR = "\033[2J"


def _env() -> dict:
    return {**os.environ, "OIALR_SEARCH_STORAGE": "", "OMP_NUM_THREADS": "1"}


def _set_budget(folder, study: str, budget: int) -> None:
    con = sqlite3.connect(folder / "oialr_search.db")
    with con:
        con.execute("UPDATE oialr_studies SET budget = ? WHERE name = ?", (budget, study))
    con.close()


def test_watch_on_a_finished_study_prints_once_and_exits_0(front_study):
    for args in (["--watch"], ["--watch", "0.2"]):  # the default 10 s is never waited for: the budget is spent
        start = time.monotonic()
        proc = cli(["status", "--study", "front", *args], front_study)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.count("study front ") == 1 and "8 complete, 0 running" in proc.stdout
        assert CLEAR not in proc.stdout  # not a terminal: nothing to clear
        assert time.monotonic() - start < 9


def test_watch_must_be_positive(front_study):
    for value in ("0", "-1", "inf", "nan"):
        proc = cli(["status", "--study", "front", "--watch", value], front_study)
        assert proc.returncode == 2 and proc.stdout == ""
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and "--watch: must be a positive number of seconds" in lines[0], proc.stderr


def test_watch_refreshes_until_the_budget_is_spent_and_clears_a_terminal(tmp_path):
    write_space(tmp_path, objectives=SINGLE, extra="set: {train.epochs: 12}")  # trials of about a second
    search(tmp_path, "w", 1)
    more = subprocess.Popen([sys.executable, "-m", "oialr_search", "resume", "--study", "w", "--budget", "6"],
                            cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=_env(),
                            start_new_session=True)
    try:
        # watch once the new budget is stored (before, the study looks finished and watch would end at once)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            con = sqlite3.connect(tmp_path / "oialr_search.db")
            budget = con.execute("SELECT budget FROM oialr_studies WHERE name = 'w'").fetchone()[0]
            con.close()
            if budget == 6:
                break
            time.sleep(0.05)
        primary, replica = pty.openpty()  # a terminal: the screen is cleared before each refresh
        watch = subprocess.Popen([sys.executable, "-m", "oialr_search", "status", "--study", "w", "--watch", "0.2"],
                                 cwd=tmp_path, stdout=replica, stderr=subprocess.PIPE, env=_env())
        os.close(replica)
        output = b""
        while True:
            try:
                chunk = os.read(primary, 4096)
            except OSError:  # the terminal closed: watch ended
                break
            if not chunk:
                break
            output += chunk
        assert watch.wait(timeout=120) == 0, watch.stderr.read()
        os.close(primary)
        assert more.wait(timeout=120) == 0, more.stderr.read()
    finally:
        if more.poll() is None:
            os.killpg(more.pid, signal.SIGKILL)
    text = output.decode()
    refreshes = text.count("study w ")
    assert refreshes >= 2 and text.count(CLEAR) == refreshes, text
    assert "6 complete, 0 running" in text.rsplit(CLEAR, 1)[-1]  # the last refresh: the budget is spent


def test_ctrl_c_ends_a_watch_with_130(tmp_path):
    write_space(tmp_path, objectives=SINGLE)
    search(tmp_path, "w", 1)
    _set_budget(tmp_path, "w", 50)  # a study that is not finished and that nothing runs: watch goes on
    watch = subprocess.Popen([sys.executable, "-m", "oialr_search", "status", "--study", "w", "--watch", "0.2"],
                             cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
    try:
        deadline = time.monotonic() + 60
        first = ""
        while "best:" not in first and time.monotonic() < deadline:
            first += watch.stdout.readline()
        watch.send_signal(signal.SIGINT)
        out, err = watch.communicate(timeout=60)
    finally:
        if watch.poll() is None:
            watch.kill()
    assert watch.returncode == 130
    assert err.strip() == "oialr-search: interrupted"  # one line, no traceback
