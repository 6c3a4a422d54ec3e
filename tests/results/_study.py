"""Studies built through the CLI as a user would: tiny MLPs on the embedded digits, one process, Optuna."""

import json
import os
import sqlite3
import sys
from pathlib import Path

from .._processes import run_killable

SPACE = """\
base:
  model: {name: mlp, kwargs: {hidden: 32, depth: 1}}
  data: {name: digits, val_fraction: 0.2}
  # the first trial of a search is the base config: a tiny lr, so later trials push it off the front
  oialr: {keep_last_layer: false, delay: 0.3, beta: 0.05, update_frequency: 3}
  optim: {lr: 1.0e-4}
  train: {epochs: 2, batch_size: 128}
%(objectives)s
%(extra)s
params:
  oialr.beta: {type: float, low: 0.05, high: 0.6, log: true}
  optim.lr: {type: float, low: 1.0e-4, high: 2.0e-2, log: true}
  oialr.update_frequency: {type: int, low: 2, high: 6}
"""
FRONT = "objectives: [{metric: top1}, {metric: trainable_fraction}]"
SINGLE = "objective: {metric: val_loss}"


def write_space(folder: Path, *, objectives: str = FRONT, extra: str = "", name: str = "space.yaml") -> Path:
    path = folder / name
    path.write_text(SPACE % {"objectives": objectives, "extra": extra})
    return path


def cli(args: list[str], cwd: Path, *, timeout: float = 180, env: dict | None = None):
    """``python -m oialr_search ARGS`` in ``cwd``, one torch thread, the default storage there."""
    env = {**os.environ, "OIALR_SEARCH_STORAGE": "", "OMP_NUM_THREADS": "1", **(env or {})}
    return run_killable([sys.executable, "-m", "oialr_search", *args], cwd=cwd, timeout=timeout, env=env)


def search(folder: Path, study: str, budget: int, *extra: str):
    proc = cli(["run", "space.yaml", "--study", study, "--budget", str(budget), "--backend", "optuna", *extra],
               folder)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def trials(folder: Path, study: str) -> list[dict]:
    """Every trial of ``study`` in ``folder``'s default database, by number, JSON columns decoded."""
    con = sqlite3.connect(folder / "oialr_search.db")
    con.row_factory = sqlite3.Row
    rows = con.execute("SELECT t.*, p.config FROM oialr_trials t JOIN oialr_studies s ON s.id = t.study_id "
                       "LEFT JOIN oialr_trial_payloads p ON p.trial_id = t.id WHERE s.name = ? ORDER BY t.number",
                       (study,)).fetchall()
    con.close()
    out = []
    for r in rows:
        row = dict(r)
        for key in ("params", "metrics", "objective_values", "config"):
            row[key] = json.loads(row[key]) if row[key] else None
        out.append(row)
    return out


def kept_files(work: Path) -> set[int]:
    folder = work / "weights"
    return {int(p.stem.removeprefix("trial_")) for p in folder.glob("trial_*.pt")} if folder.is_dir() else set()
