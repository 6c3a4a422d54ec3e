"""Trained weights as a file of their own, and the model rebuilt from them (:func:`load_model`).

A weights file is what a deployment needs from a trial, and nothing of its training state: the resolved
run config, the model's constructor arguments that come from the data (classes, channels, image size,
so that loading needs no data set), how its inputs were made (``preprocess``: pixel scale, resize or
crop, per-channel mean and std, the class names in output order; files of earlier releases lack it),
the final low-rank structure (whether the model had switched to U Σ Vᵀ, and every factor's rank) and
the model's state dict, on the CPU. ``format``/``version`` tell
it from a training checkpoint, which holds far more (optimizer, RNG) and is deleted when a trial ends.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from .._files import atomic_writer, make_folder_for
from ..exceptions import CheckpointError, ConfigError, WeightsError
from ..lowrank import OIALR
from ._config import RunConfig
from ._config_io import config_from_dict, config_to_dict, load_config
from ._models import create_model

if TYPE_CHECKING:
    from ._trainer import Trainer

WEIGHTS_FORMAT = "oialr-search-weights"
WEIGHTS_VERSION = 1


def weights_payload(trainer: Trainer, **extra: Any) -> dict[str, Any]:
    """What a weights file holds for ``trainer``'s model as it is now (its final state after ``fit``);
    ``extra`` adds descriptive entries (study, trial, metrics)."""
    config = config_to_dict(trainer.config)
    config["train"] = {**config["train"], "device": "auto"}  # as an exported config: loads anywhere
    oialr = trainer.oialr.state_dict()
    return {"format": WEIGHTS_FORMAT, "version": WEIGHTS_VERSION, "config": config,
            "model_args": {"num_classes": trainer.data.num_classes, "in_chans": trainer.data.in_chans,
                           "img_size": trainer.data.img_size},
            "preprocess": trainer.data.preprocess,
            "low_rank": {"converted": oialr["converted"], "ranks": oialr["ranks"]},
            "state_dict": {k: v.detach().cpu() for k, v in trainer.model.state_dict().items()}, **extra}


def save_weights(path: str | Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` to ``path`` atomically (a temporary file in the same folder, then ``os.replace``):
    a reader never sees a half-written file, and a crash leaves the previous one intact."""
    make_folder_for(path)
    with atomic_writer(path) as fh:
        torch.save(payload, fh)


def read_weights(path: str | Path, data: bytes | None = None) -> dict[str, Any]:
    """The payload of a weights file (``data``: its bytes, already read); :class:`WeightsError` when it is
    missing, unreadable or not one."""
    path = Path(path)
    if data is None and not path.is_file():
        raise WeightsError(f"{path}: no such weights file")
    try:
        payload = torch.load(io.BytesIO(data) if data is not None else path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many kinds for a damaged or foreign file
        raise WeightsError(f"{path}: unreadable as a weights file ({type(exc).__name__}); a damaged file, or not one "
                           "that 'oialr-search export --weights' wrote") from None
    if not isinstance(payload, dict) or payload.get("format") != WEIGHTS_FORMAT:
        raise WeightsError(f"{path}: not an oialr-search weights file (a training checkpoint or another file?); "
                           "write one with 'oialr-search export --weights'")
    if payload.get("version") != WEIGHTS_VERSION:
        raise WeightsError(f"{path}: weights format version {payload.get('version')!r}; this release reads "
                           f"version {WEIGHTS_VERSION}")
    return payload


def _run_config(config: dict | RunConfig | str | Path | None, payload: dict) -> RunConfig:
    if config is None:
        return config_from_dict(payload["config"])
    if isinstance(config, RunConfig):
        return config.validate()
    if isinstance(config, dict):
        return config_from_dict(config)
    if isinstance(config, (str, Path)):
        return load_config(config)
    raise ConfigError(f"config: expected a dict, a RunConfig or a YAML path, got {type(config).__name__}")


def build_model(config: RunConfig, payload: dict) -> nn.Module:
    """The model of ``config`` with the payload's low-rank structure and weights, on the CPU, in train mode."""
    args = payload["model_args"]
    with torch.random.fork_rng(devices=[]):  # building draws a throw-away init: leave the caller's RNG alone
        model = create_model(config.model.name, num_classes=args["num_classes"], in_chans=args["in_chans"],
                             img_size=args["img_size"], **config.model.kwargs)
    try:
        if payload["low_rank"]["converted"]:
            # the trainer's conversion (keep_first/last_layer from the config), then the trial's final ranks
            OIALR(model, None, config.oialr, total_steps=1).prepare_load(payload["low_rank"])
        model.load_state_dict(payload["state_dict"])
    except (RuntimeError, CheckpointError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise WeightsError(f"the weights do not fit the model built from the config ({first}); give the "
                           "trial's own config") from None
    return model


def load_model(config: dict | RunConfig | str | Path | None, weights: str | Path, *,
               device: str | torch.device = "cpu") -> nn.Module:
    """The trained model of a weights file (``oialr-search export --weights``), ready for inference.

    ``config`` is the trial's run config — a dict, a :class:`RunConfig`, or a YAML path such as the file
    ``export -o`` writes; None takes the config stored in the weights file. The model is rebuilt from it,
    converted to U Σ Vᵀ with the trial's final ranks when the trial had switched to low rank, given the
    trained weights, moved to ``device`` (``"auto"``: a CUDA device when there is one, as in training) and
    put in eval mode. Raises
    :class:`~oialr_search.exceptions.WeightsError` for a missing, unreadable or foreign file, or weights
    that do not fit the config's model, and :class:`~oialr_search.exceptions.ConfigError` for a bad config.
    """
    payload = read_weights(weights)
    cfg = _run_config(config, payload)
    try:
        model = build_model(cfg, payload)
    except KeyError as exc:
        raise WeightsError(f"{weights}: incomplete weights file (no {exc.args[0]!r})") from None
    from ._device import resolve_device

    return model.to(resolve_device("auto") if device == "auto" else device).eval()
