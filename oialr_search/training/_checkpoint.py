"""Atomic training checkpoints: model, optimizer, schedule position, OIALR state and RNG together."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._files import atomic_writer, make_folder_for
from ..exceptions import CheckpointError, ConfigError
from ._config_io import config_from_dict, config_to_dict

FORMAT_VERSION = 1


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` to ``path`` atomically: a crash leaves the previous checkpoint intact."""
    make_folder_for(path)
    with atomic_writer(path) as fh:
        torch.save({"format": FORMAT_VERSION, **payload}, fh)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # torch raises many kinds for a damaged file
        raise CheckpointError(f"{path}: unreadable checkpoint ({type(exc).__name__})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: not an oialr-search checkpoint (or from an incompatible version)")
    return payload


def rng_state(device: torch.device) -> dict:
    """Every random state a run draws from: torch's (CUDA's on a GPU), Python's and NumPy's."""
    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: torch.Tensor | dict, device: torch.device) -> None:
    """Restore what :func:`rng_state` returned (or an early release's torch state alone)."""
    if isinstance(state, torch.Tensor):  # a checkpoint from before the full RNG state: torch's only
        torch.set_rng_state(state)
        return
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def resolved_config(stored: dict) -> dict | None:
    """A checkpoint's config as this release resolves it (older releases wrote fewer keys, or
    ``data.augment`` as a bool); None when it no longer loads."""
    try:
        return config_to_dict(config_from_dict(stored))
    except ConfigError:
        return None


def portable_config(config: dict | None) -> dict | None:
    """A config without its device and thread count: a checkpoint resumes on another GPU or rank (a trial
    resumed by another job), nor the data loading settings, which change how, not what, is computed
    (and whose defaults changed). (CPU float sums depend on the threads: an exact resume needs the same.)
    Nor its precision, which goes with the device (a checkpoint of the release before it, fp32, resumes in
    fp32 under the search, whose stored trial configs say so: see stored_run_config), nor whether the
    forward is compiled. Nor where the data set lies (data.path): a moved copy of it resumes the run."""
    if config is None:
        return None
    return {**config, "train": {k: v for k, v in config["train"].items() if k not in ("device", "threads",
                                                                                       "precision", "compile")},
            "data": {k: v for k, v in config["data"].items() if k not in ("num_workers", "on_device", "path")}}


def misfit_of(exc: BaseException) -> str | None:
    """What does not fit, when ``exc`` is load_state_dict's error for a state of other keys or shapes (its
    first detail, e.g. "size mismatch for 1.weight: …"), else None."""
    text = str(exc)
    if isinstance(exc, torch.OutOfMemoryError) or not any(
            m in text for m in ("Error(s) in loading state_dict", "doesn't match the size of optimizer's group",
                                "different number of parameter groups")):
        return None
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return "; ".join(lines[:2])[:300]
