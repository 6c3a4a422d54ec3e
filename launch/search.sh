#!/usr/bin/env bash
# Run a search on one node: one MPI rank per GPU (or per CPU-core share without GPUs).
#   bash launch/search.sh SPACE.yaml STUDY [RANKS] [-- extra 'oialr-search run' options]
# Uses the venv's mpiexec when there is one (pip's MPICH); set MPIEXEC to use your system MPI.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SPACE="${1:?usage: launch/search.sh SPACE.yaml STUDY [RANKS] [-- options]}"
STUDY="${2:?usage: launch/search.sh SPACE.yaml STUDY [RANKS] [-- options]}"
shift 2
RANKS="${1:-}"
case "$RANKS" in
  ""|--) RANKS="" ;;
  -[0-9]*) echo "launch/search.sh: RANKS must be a positive whole number, got '$RANKS'" >&2; exit 2 ;;
  -*) RANKS="" ;;  # options without the --: they go to oialr-search run as they are
  *[!0-9]*) echo "launch/search.sh: RANKS must be a positive whole number, got '$RANKS' (options go after --)" >&2
            exit 2 ;;
  *) shift
     RANKS=$((10#$RANKS))  # 08 is 8, not octal
     if [ "$RANKS" -lt 1 ]; then echo "launch/search.sh: RANKS must be at least 1, got 0" >&2; exit 2; fi ;;
esac
if [ "${1:-}" = "--" ]; then shift; fi
PY="${PYTHON:-$ROOT/.venv/bin/python}"
if [ -z "$RANKS" ]; then
  # the venv's Python: the system python3 may have no torch (or another CUDA build) and would count 0 GPUs
  GPUS=$("$PY" -c "import torch; print(torch.cuda.device_count())" 2>/dev/null || echo 0)
  RANKS=$(( GPUS > 1 ? GPUS : 2 ))
fi
MPIEXEC="${MPIEXEC:-$(dirname "$PY")/mpiexec}"
[ -x "$MPIEXEC" ] || MPIEXEC=mpirun
echo "== $MPIEXEC -n $RANKS: study $STUDY on $SPACE"
# -m mpi4py: an uncaught exception on one rank aborts the job instead of hanging the others.
exec "$MPIEXEC" -n "$RANKS" "$PY" -m mpi4py -m oialr_search run "$SPACE" --study "$STUDY" "$@"
