"""Full-rank vs OIALR, side by side in one run (DESIGN.md §5, trainer figures).

    python bench/trainer.py [--width 192] [--batch 128] [--rounds 5] [--epochs 3]

Part 1 times one training step of the mini-ViT at forced ranks (every factor cut to the same
fraction of its full rank), interleaving dense and low-rank steps in rounds and taking medians, and
prints each step-time ratio next to the trainable fraction and the FLOP ratio of the factorized
layers (per token, forward and backward, the path the cost model chose); where the cost rule applies
Σ apart, the same ranks with Σ merged run beside them. Part 2 trains full-rank and OIALR for the same
steps on the embedded MNIST data and prints the total-time ratio, the SVD-update share of OIALR's
training time, and final accuracy and trainable fraction of both.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from oialr_search.training import Trainer, config_from_dict, train  # noqa: E402


def flop_ratio(factors, tokens: int, device: torch.device | None = None) -> float:
    """Multiply-adds of the factorized layers per token in a training step (forward and backward),
    relative to their dense products, for the path each layer takes on ``device`` (on CUDA the
    factorized product's rank is padded). Dense: 3·m·n (and, for a factor on its dense path, building W
    and its gradient's projection: 2·m·n·r over the tokens); factorized: 2·r'·(m+n), plus r'·min(m, n)
    for the gradient of the side Σ is merged into, or 3·r'² with Σ apart."""
    dense = chosen = 0.0
    for _, f in factors:
        m, n, r = f.out_features, f.in_features, f.rank
        align = f.alignment(device) if device is not None else 1
        dense += 3 * m * n
        if f.use_factorized(tokens, align=align):
            rp = f.padded_rank(align)
            chosen += 2 * rp * (m + n) + (3 * rp * rp if f.sigma_apart(align) else rp * min(m, n))
        else:
            chosen += m * n * (3 + 2 * r / tokens)
    return chosen / dense


def force_ranks(trainer: Trainer, fraction: float) -> None:
    """Switch to low rank now and cut every factor to ``fraction`` of its full rank (optimizer state too)."""
    trainer.oialr.switch(trainer.step)
    for _, f in trainer.oialr.factors:
        trainer.oialr.rotate(f, beta=1.0, min_rank=max(1, math.ceil(fraction * f.full_rank)))


def make_trainer(width: int, batch: int, enabled: bool) -> Trainer:
    cfg = config_from_dict({
        "model": {"name": "mini_vit", "kwargs": {"embed_dim": width, "depth": 6, "num_heads": 6}},
        "data": {"name": "mnist"},
        "train": {"epochs": 1, "batch_size": batch, "seed": 0},
        # switch at step 0, then no scheduled update: ranks are forced below
        "oialr": {"enabled": enabled, "delay": 0, "update_frequency": 10**9},
    })
    return Trainer(cfg, log=None)


def part1(width: int, batch: int, rounds: int, steps: int, fractions: list[float]) -> None:
    """Times the trainer's own step (lr, forward, backward, clipping, AdamW) at forced ranks."""
    variants: dict[str, Trainer] = {"full-rank": make_trainer(width, batch, False)}
    tokens = batch * ((28 // 7) ** 2 + 1)  # MNIST's 28 px in 7-px patches, and the class token
    for frac in fractions:
        t = make_trainer(width, batch, True)
        force_ranks(t, frac)
        variants[f"rank {frac:.0%}"] = t
        if any(f.use_factorized(tokens) and f.sigma_apart() for _, f in t.oialr.factors):  # Σ merged beside it
            t = make_trainer(width, batch, True)
            force_ranks(t, frac)
            for _, f in t.oialr.factors:
                f.sigma_placement = "merged"
            variants[f"{frac:.0%} Σ merged"] = t
    x, y = next(variants["full-rank"].train_batches.epoch(0))
    for t in variants.values():  # warm-up, and past step 0
        t.train_step(x, y)
        t.train_step(x, y)
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, t in variants.items():
            start = time.perf_counter()
            for _ in range(steps):
                t.train_step(x, y)
            times[name].append((time.perf_counter() - start) / steps)
    full = statistics.median(times["full-rank"])
    print(f"\n== Part 1: trainer step time at forced ranks (mini-ViT width {width}, depth 6, batch {batch}, "
          f"{tokens} tokens; median of {rounds} rounds x {steps} steps, interleaved)")
    print(f"{'variant':>12} {'step s':>8} {'ratio':>7} {'trainable':>10} {'FLOP ratio':>11}")
    print(f"{'full-rank':>12} {full:8.4f} {1.0:7.3f} {100.0:9.1f}% {1.0:11.3f}")
    worst = 0.0
    for name, t in variants.items():
        if name == "full-rank":
            continue
        step_time = statistics.median(times[name])
        ratio = step_time / full
        if name.startswith("rank"):  # the shipped paths (a Σ-merged twin is a comparison)
            worst = max(worst, ratio)
        print(f"{name:>12} {step_time:8.4f} {ratio:7.3f} {100 * t.oialr.counts().trainable_fraction:9.1f}% "
              f"{flop_ratio(t.oialr.factors, tokens):11.3f}")
    print(f"worst low-rank/full-rank step ratio: {worst:.3f}")
    for name in variants:
        if name.endswith("Σ merged"):
            frac = name.split()[0]
            apart, merged = statistics.median(times[f"rank {frac}"]), statistics.median(times[name])
            print(f"at {frac} rank, Σ apart / Σ merged step time: {apart / merged:.3f}")
    r = max(f.full_rank for _, f in variants[f"rank {fractions[0]:.0%}"].oialr.factors)
    print(f"(at full rank the dense path must build W and project dW each step: ~2r/(3N) = "
          f"{2 * r / (3 * tokens):.1%} of the linear layers' FLOPs for r={r}, N={tokens} tokens)")


def part2(width: int, batch: int, epochs: int) -> None:
    base = {
        "model": {"name": "mini_vit", "kwargs": {"embed_dim": width, "depth": 6, "num_heads": 6}},
        "data": {"name": "mnist"},
        "optim": {"lr": 0.001},
        "train": {"epochs": epochs, "batch_size": batch, "seed": 0},
        "oialr": {"delay": 0.2, "update_frequency": 30, "beta": 0.5, "layer_fraction": 0.5},
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
          f"OIALR delay 0.2, f=30, beta 0.5, p=0.5)")
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
    ap.add_argument("--epochs", type=int, default=6, help="epochs of part 2 (0 skips it)")
    ap.add_argument("--fractions", default="1.0,0.9,0.75,0.6,0.5,0.35,0.25,0.15,0.1,0.05")
    args = ap.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    part1(args.width, args.batch, args.rounds, args.steps, [float(f) for f in args.fractions.split(",")])
    if args.epochs:
        part2(args.width, args.batch, args.epochs)


if __name__ == "__main__":
    main()
