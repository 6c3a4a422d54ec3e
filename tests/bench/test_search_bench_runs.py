"""bench/search.py prints figures nobody checks in CI; a small storage run keeps its verbs' calls in step
with the CLI (they once drifted: a verb grew an argument and the benchmark stopped at it)."""

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_search_bench_storage_part_runs_every_verb():
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "search.py"), "--only", "storage",
                           "--storage-trials", "30", "--trajectory-kb", "2"],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    for verb in ("status", "best", "pareto", "best --pick"):
        assert re.search(rf"^\s*{re.escape(verb)}:\s+[0-9.]+ ms$", proc.stdout, re.M), proc.stdout
    assert re.search(r"^surrogate's study read: [0-9.]+ ms once per job, then [0-9.]+ ms per proposal", proc.stdout,
                     re.M), proc.stdout


def test_search_bench_sampler_part_times_the_samplers_and_the_surrogate():
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "search.py"), "--only", "sampler",
                           "--sampler-trials", "6", "8"],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    for sampler in ("gp", "tpe"):
        assert re.search(rf"^\s*{sampler}\s+[0-9.]+\s+[0-9.]+$", proc.stdout, re.M), proc.stdout
    assert re.search(r"^\s*propulate\s+[0-9.]+\s+[0-9.]+\s+\(the Propulate backend's surrogate", proc.stdout,
                     re.M), proc.stdout
