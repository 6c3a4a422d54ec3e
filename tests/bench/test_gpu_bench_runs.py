"""bench/gpu.py is for GPU nodes, where CI never runs; its --smoke mode keeps it from rotting here."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_gpu_bench_smoke_runs_every_part_on_cpu():
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu.py"), "--device", "cpu", "--smoke"],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    for part in ("== 1. Placement: 2 ranks", "== 2. Precision", "bf16 speed-up over fp32", "== 3. OIALR vs full rank",
                 "== 4. SVD updates", "== 5. Cost model", "right choice for",
                 "== 6. train.compile (aot_eager, mode default)", "rank 10% compiled",
                 "updates, eager, bf16", "updates, compiled (default), bf16"):
        assert part in proc.stdout, proc.stdout[-3000:]
    assert "rank 1 (local 1/2): cpu" in proc.stdout


def test_gpu_bench_says_what_to_do_without_a_gpu():
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu.py")], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode != 0 and "no CUDA device here" in proc.stderr
