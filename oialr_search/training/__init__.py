"""Training: run config, data, models, lr schedules and the trainer loop."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

if TYPE_CHECKING:  # the public names; at run time each is imported from its module on first use (_lazy)
    from ._augment import build_batch_ops
    from ._augment_config import AugmentConfig
    from ._batches import BatchIterator, Loading, loading_for
    from ._bundled import CONFIG_DIR, bundled_configs, resolve_config_path
    from ._checkpoint import load_checkpoint, save_checkpoint
    from ._config import DataConfig, ModelConfig, OptimConfig, RunConfig, ScheduleConfig, TrainConfig
    from ._config_io import (
        apply_overrides,
        apply_values,
        config_from_dict,
        config_to_dict,
        dump_config,
        load_config,
        read_yaml,
        save_config,
        stored_run_config,
    )
    from ._data import DataBundle, load_data
    from ._datasets import DATASETS
    from ._lr import lr_at, steps_from, trainable_coupling
    from ._models import create_model, model_names, register_model
    from ._results import EpochCallback, EpochRecord, Preempted, TrainingDiverged, TrainResult
    from ._trainer import Trainer, train
    from ._weights import build_model, load_model, read_weights, save_weights, weights_payload

__all__ = [
    "AugmentConfig",
    "CONFIG_DIR",
    "bundled_configs",
    "resolve_config_path",
    "DATASETS",
    "BatchIterator",
    "DataBundle",
    "DataConfig",
    "EpochCallback",
    "EpochRecord",
    "Loading",
    "ModelConfig",
    "OptimConfig",
    "RunConfig",
    "ScheduleConfig",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "TrainingDiverged",
    "Preempted",
    "apply_overrides",
    "apply_values",
    "build_batch_ops",
    "build_model",
    "config_from_dict",
    "config_to_dict",
    "create_model",
    "dump_config",
    "load_checkpoint",
    "load_config",
    "load_data",
    "load_model",
    "loading_for",
    "lr_at",
    "model_names",
    "read_weights",
    "read_yaml",
    "register_model",
    "save_checkpoint",
    "save_config",
    "save_weights",
    "steps_from",
    "stored_run_config",
    "train",
    "trainable_coupling",
    "weights_payload",
]

__getattr__, __dir__ = lazy_exports(__name__, __file__)
