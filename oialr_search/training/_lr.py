"""Learning-rate schedules (DESIGN.md §1.6)."""

from __future__ import annotations

import math

from ._config import ScheduleConfig


def steps_from(value: float | int, total_steps: int) -> int:
    """A step count given as an int, or as a float fraction of ``total_steps``."""
    return int(round(value * total_steps)) if isinstance(value, float) else int(value)


def lr_at(step: int, total_steps: int, lr: float, schedule: ScheduleConfig) -> float:
    """Warmup (linear from warmup_lr) then k-decay cosine from lr to min_lr.

    k-decay (Zhang & Li 2020): lr_t = min + (lr − min)·(1 + cos(π·tᵏ/Tᵏ))/2 over the decay phase;
    k = 1 is the plain cosine, k > 1 keeps the lr high for longer. min_lr > lr gives a rising curve.
    """
    warmup = min(steps_from(schedule.warmup, total_steps), total_steps)
    if step < warmup:
        return schedule.warmup_lr + (lr - schedule.warmup_lr) * (step / warmup)
    decay = max(1, total_steps - warmup)
    t = min(1.0, (step - warmup) / decay)
    shape = 0.5 * (1.0 + math.cos(math.pi * t**schedule.k_decay))
    return schedule.min_lr + (lr - schedule.min_lr) * shape


def trainable_coupling(trainable_fraction: float, alpha: float) -> float:
    """lr multiplier trainable_fraction^(−alpha): the lr rises as the parameter count falls."""
    if alpha == 0.0 or trainable_fraction <= 0.0:
        return 1.0
    return trainable_fraction ** (-alpha)
