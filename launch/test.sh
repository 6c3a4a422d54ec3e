#!/usr/bin/env bash
# Set up .venv if needed and run the whole test suite (MPI tests included).
#   bash launch/test.sh [pytest args...]
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_venv.sh"
cd "$ROOT"
echo "== ruff"
ruff check oialr_search tests bench
echo "== pytest"
python -m pytest -q "$@"
