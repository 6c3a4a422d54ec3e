"""What a training run reports: one record per epoch, the final result, and how a run can end early."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any


class TrainingDiverged(RuntimeError):
    """The training loss became NaN or infinite."""


class Preempted(RuntimeError):  # noqa: N818 - what happened, as TrainingDiverged
    """``fit``'s ``should_stop`` asked to stop: the run was checkpointed at a step boundary."""


@dataclass
class EpochRecord:
    epoch: int
    step: int
    train_loss: float
    val_loss: float
    top1: float
    top5: float
    lr: float
    trainable_fraction: float
    seconds: float
    compression: float = math.nan  # NaN in histories of checkpoints written before these fields existed
    train_seconds: float = math.nan  # cumulative training time so far (the final metric's running value)


EpochCallback = Callable[[EpochRecord], bool]


@dataclass
class TrainResult:
    """Final metrics of a run (``to_dict`` is what ``train --out`` writes)."""

    val_loss: float
    top1: float
    top5: float
    train_seconds: float
    steps: int
    trainable_fraction: float
    compression: float
    trainable_parameters: int
    original_parameters: int
    final_ranks: dict[str, int]
    precision: str = "fp32"  # the resolved train.precision
    skipped_steps: int = 0  # fp16: optimizer steps the loss scaler skipped for inf/NaN gradients
    stopped_early: bool = False  # an ``on_epoch`` callback stopped the run before train.epochs
    epochs: list[EpochRecord] = field(default_factory=list)
    oialr_updates: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
