"""Mixed precision for the training step, as timm's ``train.py --amp`` does it (DESIGN.md §8).

The forward and the loss run under ``torch.autocast``; every trained tensor (Σ, biases, full-rank
weights) stays an fp32 master weight, and the OIALR events (SVDs, basis rotations, the optimizer-state
transport) run outside autocast, in fp32 — torch.linalg.svd has no half-precision kernels and the
rotations must stay orthogonal to fp32 accuracy. fp16 adds a GradScaler; the steps it skips for inf
or NaN gradients are counted on the device (no host synchronization per step).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable

import torch
from torch import nn

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_precision(name: str, device: torch.device) -> str:
    """``auto`` → bf16 on a CUDA device that supports it, else fp32; other names as they are."""
    if name != "auto":
        return name
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return "bf16"
    return "fp32"


class Precision:
    """The autocast context, the backward pass and the optimizer step of one precision."""

    def __init__(self, name: str, device: torch.device) -> None:
        self.name = resolve_precision(name, device)
        self.device = device
        self.dtype = DTYPES.get(self.name)
        self.scaler = torch.amp.GradScaler(device.type) if self.name == "fp16" else None
        self._skipped = torch.zeros((), dtype=torch.int64, device=device)

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    def backward_and_step(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer,
                          parameters: Iterable[nn.Parameter], grad_clip: float | None) -> None:
        """Backward, optional gradient clipping (on unscaled gradients), optimizer step."""
        if self.scaler is None:
            loss.backward()
            if grad_clip:
                nn.utils.clip_grad_norm_(parameters, grad_clip)
            optimizer.step()
            return
        self.scaler.scale(loss).backward()
        if grad_clip:
            self.scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(parameters, grad_clip)
        before = self.scaler._scale.clone()  # the scale shrinks exactly when the step was skipped
        self.scaler.step(optimizer)
        self.scaler.update()
        self._skipped += (self.scaler._scale < before).to(torch.int64)

    @property
    def skipped_steps(self) -> int:
        """Optimizer steps the loss scaler skipped (inf/NaN gradients); synchronizes, call per epoch."""
        return int(self._skipped.item())

    def state_dict(self) -> dict:
        return {"name": self.name, "skipped": self.skipped_steps,
                "scaler": self.scaler.state_dict() if self.scaler is not None else None}

    def load_state_dict(self, state: dict | None) -> None:
        if not state:
            return  # a checkpoint from before mixed precision: fp32, nothing to restore
        self._skipped.fill_(int(state.get("skipped", 0)))
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
