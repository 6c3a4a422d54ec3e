#!/usr/bin/env bash
# Set up .venv if needed and run the whole test suite (MPI tests included).
#   bash launch/test.sh [pytest args...]   (OIALR_TEST_WORKERS=N: pytest-xdist workers, 2 by default)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_venv.sh"
cd "$ROOT"
echo "== ruff"
ruff check oialr_search tests bench
# Two workers (pytest-xdist): half the suite's time waits on subprocesses (MPI ranks, CLI runs), so two use
# a 2-core machine's cores. OIALR_TEST_WORKERS=0 runs it in one process; later pytest args (-n N) win.
echo "== pytest (${OIALR_TEST_WORKERS:-2} workers)"
python -m pytest -q -n "${OIALR_TEST_WORKERS:-2}" --dist loadfile "$@"  # a file's shared fixtures built once
