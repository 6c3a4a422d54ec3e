# Shared by the launch scripts: create .venv if missing and install the package into it.
# The CPU torch is pinned first (an unpinned torch pulls several GB of CUDA wheels); users with
# their own CUDA torch install the package into their environment instead: pip install -e .
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
WANT="$(cat "$ROOT/pyproject.toml" "$ROOT/launch/constraints.txt" | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$STAMP" 2>/dev/null)" != "$WANT" ]; then
  echo "== installing (CPU torch 2.13.0, the package and its dev tools)"
  "$VENV/bin/python" -m pip install -q --upgrade pip
  "$VENV/bin/python" -m pip install -q -c "$ROOT/launch/constraints.txt" torch torchvision
  "$VENV/bin/python" -m pip install -q -c "$ROOT/launch/constraints.txt" -e "$ROOT[dev,mpich]"
  echo "$WANT" > "$STAMP"
fi
export PATH="$VENV/bin:$PATH"
