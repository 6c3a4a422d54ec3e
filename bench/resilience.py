"""What surviving jobs costs a trial: checkpoints and heartbeats, side by side in one run (DESIGN.md §7).

    python bench/resilience.py [--space search_spaces/mnist_front.yaml] [--rounds 3] [--beat 1.0]

Trains the space's start configuration (its base config) as a search trial would, alternating
between plain runs and runs that checkpoint every epoch (and every ``--minutes`` within one, when
given) while a heartbeat thread writes every ``--beat`` seconds (default 1 s, ten times the default
rate: an upper bound), and prints the median wall time of each and the overhead. Also prints the size
of one checkpoint and the time to write it.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from oialr_search.search import load_space  # noqa: E402
from oialr_search.search._heartbeat import Heartbeat  # noqa: E402
from oialr_search.search._objective import run_trial  # noqa: E402
from oialr_search.storage import Store  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--space", default=str(Path(__file__).resolve().parents[1] / "search_spaces" / "mnist_front.yaml"))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--beat", type=float, default=1.0, help="heartbeat interval in seconds")
    ap.add_argument("--minutes", type=float, default=None, help="also checkpoint within epochs this often")
    args = ap.parse_args()
    torch.set_num_threads(1)
    space = load_space(args.space)
    params = space.start_params() or {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        store = Store(f"sqlite:///{folder}/bench.db")
        study = store.create_study(name="b", space=space.to_dict(), space_path=space.path, metric=space.metric,
                                   direction=space.direction, backend="optuna", seed=0, budget=100)
        beat = Heartbeat(store, interval=args.beat)
        run_trial(space, params, device="cpu", threads=1)  # warm: data set cache, imports
        times: dict[str, list[float]] = {"plain": [], "checkpoints + heartbeat": []}
        epochs = 0
        for r in range(args.rounds):
            start = time.perf_counter()
            out = run_trial(space, params, device="cpu", threads=1)
            times["plain"].append(time.perf_counter() - start)
            epochs = len(out.epochs)
            trial = store.start_trial(study, params=params, rank=0, island=None, device="cpu", grace=beat.grace)
            ckpt = folder / f"trial_{r}.ckpt"
            beat.start(trial.id)
            start = time.perf_counter()
            run_trial(space, params, device="cpu", threads=1, checkpoint=ckpt,
                      checkpoint_every=60 * args.minutes if args.minutes else None)
            times["checkpoints + heartbeat"].append(time.perf_counter() - start)
            beat.stop()
        beat.close()
        size = ckpt.stat().st_size / 2**20
        plain, guarded = (statistics.median(v) for v in times.values())
    print(f"== {Path(args.space).name}: {epochs} epochs per trial, median of {args.rounds} rounds, interleaved")
    print(f"plain trial: {plain:.2f}s; with a checkpoint every epoch and a heartbeat every {args.beat:g}s: "
          f"{guarded:.2f}s; overhead {100 * (guarded / plain - 1):+.1f}%")
    print(f"one checkpoint: {size:.2f} MiB")


if __name__ == "__main__":
    main()
