"""The training device: which one (``train.device``), and the CUDA settings a run trains under."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from ..exceptions import ConfigError


def resolve_device(name: str) -> torch.device:
    """``train.device`` as a torch device ("auto": CUDA where there is one); ConfigError for a CUDA device
    the machine lacks."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"train.device: {name} requested but no CUDA device is available")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(f"train.device: {name} requested but this machine has {torch.cuda.device_count()} "
                          "CUDA device(s), numbered from 0")
    return device


def use_device(device: torch.device) -> None:
    """Make ``device`` the current CUDA device and allow TF32 for fp32 matmuls, as timm does."""
    if device.type == "cuda":
        if device.index is not None:  # "cuda" alone is the current device already
            torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


@contextlib.contextmanager
def full_fp32(device: torch.device) -> Iterator[None]:
    """No TF32 inside: the OIALR events' SVDs and basis rotations must keep U and V orthonormal to fp32
    accuracy, update after update."""
    if device.type != "cuda":
        yield
        return
    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before
