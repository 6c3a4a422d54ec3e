# Shared by the launch scripts: create .venv if missing and install the package into it.
# torch 2.13.0 is pinned and installed first, from pip's configured indexes: on a stock machine that is
# PyPI, whose Linux torch is a CUDA build (several GB). For a CPU-only build set
#   OIALR_TORCH_INDEX=https://download.pytorch.org/whl/cpu
# Users with their own CUDA torch install the package into their environment instead: pip install -e .
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${OIALR_VENV:-$ROOT/.venv}"
PY="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
  echo "== creating $VENV"
  "$PY" -m venv "$VENV"
fi
# Re-install only when the dependency list changed (fast re-runs).
STAMP="$VENV/.oialr-installed"
WANT="$( (cat "$ROOT/pyproject.toml" "$ROOT/launch/constraints.txt"; echo "${OIALR_TORCH_INDEX:-}") \
  | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$STAMP" 2>/dev/null)" != "$WANT" ]; then
  echo "== installing torch 2.13.0 (${OIALR_TORCH_INDEX:-from the configured pip indexes}), the package and its dev tools"
  "$VENV/bin/python" -m pip install -q --upgrade pip
  TORCH_INDEX=()
  [ -n "${OIALR_TORCH_INDEX:-}" ] && TORCH_INDEX=(--index-url "$OIALR_TORCH_INDEX")
  "$VENV/bin/python" -m pip install -q ${TORCH_INDEX[@]+"${TORCH_INDEX[@]}"} -c "$ROOT/launch/constraints.txt" torch torchvision
  # setuptools warns about every editable install with a 10-line banner (a folder named like the package
  # in the working directory could shadow it): nothing a newcomer has to act on
  PYTHONWARNINGS="ignore:Editable installation" \
    "$VENV/bin/python" -m pip install -q -c "$ROOT/launch/constraints.txt" -e "$ROOT[dev,mpich,postgres]"
  echo "$WANT" > "$STAMP"
fi
export PATH="$VENV/bin:$PATH"
