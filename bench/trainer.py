"""Full-rank vs OIALR, side by side in one run (DESIGN.md §5, trainer figures).

    python bench/trainer.py [--width 192] [--batch 128] [--rounds 5] [--epochs 3]

Part 1 times one training step of the mini-ViT at forced ranks (every factor cut to the same
fraction of its full rank), interleaving dense and low-rank steps in rounds and taking medians, and
prints each step-time ratio next to the trainable fraction and the FLOP ratio of the factorized
layers (per token, the path the cost model chose). Part 2 trains full-rank and OIALR for the same
steps on the embedded MNIST data and prints the total-time ratio, the SVD-update share of OIALR's
training time, and final accuracy and trainable fraction of both.
"""

from __future__ import annotations

import argparse
import copy
import math
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from oialr_search.lowrank import convert_to_low_rank, count_parameters  # noqa: E402
from oialr_search.training import config_from_dict, create_model, train  # noqa: E402


def flop_ratio(factors, tokens: int) -> float:
    """Multiply-adds of the factorized layers per token, relative to their dense products."""
    dense = chosen = 0.0
    for _, f in factors:
        m, n, r = f.out_features, f.in_features, f.rank
        dense += m * n
        chosen += r * (m + n) if f.use_factorized(tokens) else m * n * (1 + r / tokens)
    return chosen / dense


def make_step(model, batch, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 1, 28, 28, generator=g)
    y = torch.randint(0, 10, (batch,), generator=g)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    def step():
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()

    return step, opt


def part1(width: int, batch: int, rounds: int, steps: int, fractions: list[float]) -> None:
    torch.manual_seed(0)
    base = create_model("mini_vit", num_classes=10, in_chans=1, img_size=28, embed_dim=width, depth=6, num_heads=6)
    original = sum(p.numel() for p in base.parameters())
    variants = {"full-rank": (base, None)}
    tokens = batch * ((28 // 7) ** 2 + 1)
    for frac in fractions:
        model = copy.deepcopy(base)
        factors = convert_to_low_rank(model, keep_last_layer=True)
        for _, f in factors:
            f.rotate_(beta=1.0, min_rank=max(1, math.ceil(frac * f.full_rank)))
        variants[f"rank {frac:.0%}"] = (model, factors)
    steppers = {name: make_step(m, batch)[0] for name, (m, _) in variants.items()}
    for step in steppers.values():  # warm-up
        step()
        step()
    times = {name: [] for name in variants}
    for _ in range(rounds):
        for name, step in steppers.items():
            start = time.perf_counter()
            for _ in range(steps):
                step()
            times[name].append((time.perf_counter() - start) / steps)
    full = statistics.median(times["full-rank"])
    print(f"\n== Part 1: step time at forced ranks (mini-ViT width {width}, depth 6, batch {batch}, "
          f"{tokens} tokens; median of {rounds} rounds x {steps} steps, interleaved)")
    print(f"{'variant':>12} {'step s':>8} {'ratio':>7} {'trainable':>10} {'FLOP ratio':>11}")
    print(f"{'full-rank':>12} {full:8.4f} {1.0:7.3f} {100.0:9.1f}% {1.0:11.3f}")
    worst = 0.0
    for name, (model, factors) in variants.items():
        if factors is None:
            continue
        t = statistics.median(times[name])
        frac = count_parameters(model, original).trainable_fraction
        ratio = t / full
        worst = max(worst, ratio)
        print(f"{name:>12} {t:8.4f} {ratio:7.3f} {100 * frac:9.1f}% {flop_ratio(factors, tokens):11.3f}")
    print(f"worst low-rank/full-rank step ratio: {worst:.3f}")


def part2(width: int, batch: int, epochs: int) -> None:
    base = {
        "model": {"name": "mini_vit", "kwargs": {"embed_dim": width, "depth": 6, "num_heads": 6}},
        "data": {"name": "mnist"},
        "optim": {"lr": 0.001},
        "train": {"epochs": epochs, "batch_size": batch, "seed": 0},
        "oialr": {"delay": 0.25, "update_frequency": 10, "beta": 0.3, "layer_fraction": 0.5},
    }
    results = {}
    for name, enabled in (("full-rank", False), ("OIALR", True)):
        cfg = config_from_dict({**base, "oialr": {**base["oialr"], "enabled": enabled}})
        start = time.perf_counter()
        results[name] = train(cfg, log=None)
        print(f"  trained {name} in {time.perf_counter() - start:.1f}s", flush=True)
    full, ours = results["full-rank"], results["OIALR"]
    svd = sum(u["seconds"] for u in ours.oialr_updates)
    print(f"\n== Part 2: training at equal steps ({full.steps} steps, width {width}, batch {batch}, "
          f"OIALR delay 0.25, f=10, beta 0.3, p=0.5)")
    print(f"{'':>10} {'train s':>8} {'top1':>7} {'trainable':>10} {'compression':>12}")
    for name, r in results.items():
        print(f"{name:>10} {r.train_seconds:8.1f} {r.top1:6.2f}% {100 * r.trainable_fraction:9.1f}% "
              f"{100 * r.compression:11.1f}%")
    print(f"OIALR / full-rank training time: {ours.train_seconds / full.train_seconds:.3f}")
    print(f"SVD updates (switch + {len(ours.oialr_updates) - 1} updates): {svd:.3f}s = "
          f"{100 * svd / ours.train_seconds:.2f}% of OIALR training time")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--width", type=int, default=192)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=3, help="steps per variant per round")
    ap.add_argument("--epochs", type=int, default=3, help="epochs of part 2 (0 skips it)")
    ap.add_argument("--fractions", default="1.0,0.9,0.75,0.6,0.5,0.35,0.25,0.15,0.1,0.05")
    args = ap.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    part1(args.width, args.batch, args.rounds, args.steps, [float(f) for f in args.fractions.split(",")])
    if args.epochs:
        part2(args.width, args.batch, args.epochs)


if __name__ == "__main__":
    main()
