"""The run config: everything one training run needs, one dataclass per concern.

A trial of a search is the base config with the searched values applied, and an exported config is
exactly what ``oialr-search train`` runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..exceptions import ConfigError
from ..lowrank._config import OIALRConfig
from ._augment_config import AugmentConfig
from ._datasets import DATASETS


@dataclass
class ModelConfig:
    """``name`` is a model of our registry (``mini_vit``, ``mlp``) or any timm model name; ``kwargs``
    go to its constructor. Classes, input channels and image size come from the data."""

    name: str = "mini_vit"
    kwargs: dict = field(default_factory=dict)

    def validate(self, prefix: str = "model") -> None:
        if not self.name:
            raise ConfigError(f"{prefix}.name: must not be empty")
        for key, where in _FROM_THE_DATA.items():
            if key in self.kwargs:  # the builder gets it from the data too: "got multiple values" (a sweep)
                raise ConfigError(f"{prefix}.kwargs.{key}: comes from the data ({where}); remove it")


# constructor arguments every model gets from the data set
_FROM_THE_DATA = {"num_classes": "its classes", "in_chans": "its image channels",
                  "img_size": "data.img_size: set that instead"}


@dataclass
class DataConfig:
    """``name``: mnist | digits (embedded, no download) | cifar10 | imagefolder (read from ``path``).

    ``augment``: the augmentation section (see :class:`AugmentConfig`); ``true``/``false`` still mean
    what they meant before it existed (random shift + flip / none). ``num_workers``: DataLoader worker
    processes for data read per item (ImageFolder, or in-memory sets under timm's per-image transforms);
    null or -1 = auto: 0 on the embedded sets, else the rank's torch threads minus one (its CPU share),
    at most 16. ``on_device``: keep the data sets held as tensors on the CUDA device and index them
    there; null = auto, when they take at most 1 GiB.
    """

    name: str = "mnist"
    path: str | None = None
    val_fraction: float = 0.1
    img_size: int | None = None
    augment: AugmentConfig = field(default_factory=AugmentConfig.off)
    num_workers: int | None = None
    on_device: bool | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.augment, AugmentConfig):  # DataConfig(augment=True) in Python
            self.augment = AugmentConfig(**AugmentConfig.from_shorthand(self.augment, "data.augment"))

    def validate(self, prefix: str = "data") -> None:
        if self.name not in DATASETS:
            raise ConfigError(f"{prefix}.name: unknown data set {self.name!r}; choose one of {', '.join(DATASETS)}")
        spec = DATASETS[self.name]
        if spec.needs_path and not self.path:
            raise ConfigError(f"{prefix}.path: data set {self.name!r} is read from disk; set data.path")
        if not 0.0 < self.val_fraction < 1.0:
            raise ConfigError(f"{prefix}.val_fraction: must be in (0, 1), got {self.val_fraction}")
        if self.img_size is not None and self.img_size < 1:
            raise ConfigError(f"{prefix}.img_size: must be a positive number of pixels, got {self.img_size}")
        if self.num_workers is not None and self.num_workers < -1:
            raise ConfigError(f"{prefix}.num_workers: must be >= 0, or -1 or null for auto, got {self.num_workers}")
        if self.on_device and not spec.in_memory:
            raise ConfigError(f"{prefix}.on_device: {self.name} is read from files image by image; only mnist, "
                              "digits and cifar10 are held in memory")
        self.augment.validate(f"{prefix}.augment")
        if self.augment.enabled and self.augment.pipeline == "shift" and spec.in_memory:
            ignored = self.augment.tensor_path_ignores()
            if ignored:
                raise ConfigError(f"{prefix}.augment.{ignored[0]}: not applied by the shift pipeline (the tensor "
                                  f"path of {self.name}); set data.augment.pipeline: timm")


@dataclass
class OptimConfig:
    """AdamW. ``lr`` is the peak learning rate of the schedule."""

    lr: float = 1e-3
    weight_decay: float = 0.05
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8

    def validate(self, prefix: str = "optim") -> None:
        if not self.lr > 0:
            raise ConfigError(f"{prefix}.lr: must be > 0, got {self.lr}")
        if self.weight_decay < 0:
            raise ConfigError(f"{prefix}.weight_decay: must be >= 0, got {self.weight_decay}")
        for key in ("beta1", "beta2"):
            if not 0.0 <= getattr(self, key) < 1.0:
                raise ConfigError(f"{prefix}.{key}: must be in [0, 1), got {getattr(self, key)}")
        if not self.eps > 0:
            raise ConfigError(f"{prefix}.eps: must be > 0, got {self.eps}")


@dataclass
class ScheduleConfig:
    """Learning-rate schedule (DESIGN.md §1.6).

    Linear warmup from ``warmup_lr`` to ``optim.lr`` over ``warmup`` (steps, or a fraction of training),
    then a k-decay cosine from ``optim.lr`` to ``min_lr`` (which may exceed lr: a rising schedule).
    After the OIALR switch the lr is multiplied by trainable_fraction^(-``trainable_lr_alpha``).
    """

    warmup: float | int = 0.05
    warmup_lr: float = 1e-6
    min_lr: float = 1e-5
    k_decay: float = 1.0
    trainable_lr_alpha: float = 0.0

    def validate(self, prefix: str = "schedule") -> None:
        if isinstance(self.warmup, bool) or not isinstance(self.warmup, (int, float)):
            raise ConfigError(f"{prefix}.warmup: must be steps (int) or a fraction (float), got {self.warmup!r}")
        if isinstance(self.warmup, float) and not 0.0 <= self.warmup < 1.0:
            raise ConfigError(f"{prefix}.warmup: a fraction must be in [0, 1), got {self.warmup}")
        if isinstance(self.warmup, int) and self.warmup < 0:
            raise ConfigError(f"{prefix}.warmup: must be >= 0, got {self.warmup}")
        for key in ("warmup_lr", "min_lr", "trainable_lr_alpha"):
            if getattr(self, key) < 0:
                raise ConfigError(f"{prefix}.{key}: must be >= 0, got {getattr(self, key)}")
        if not self.k_decay > 0:
            raise ConfigError(f"{prefix}.k_decay: must be > 0, got {self.k_decay}")


PRECISIONS = ("auto", "fp32", "bf16", "fp16")
COMPILE_MODES = ("none", "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


@dataclass
class TrainConfig:
    """Loop settings. ``device``: auto | cpu | cuda | cuda:N. ``threads`` = 0 leaves torch's default.

    ``precision``: the forward's autocast dtype — auto (bf16 on a CUDA device that supports it, else
    fp32) | fp32 | bf16 | fp16 (with a loss scaler). Trained tensors stay fp32 either way.

    ``compile``: none | default | reduce-overhead (CUDA graphs) | max-autotune | max-autotune-no-cudagraphs,
    torch.compile's mode for the training forward (see ``_compile``)."""

    epochs: int = 10
    batch_size: int = 128
    eval_batch_size: int = 500
    seed: int = 0
    label_smoothing: float = 0.1
    grad_clip: float | None = 1.0
    device: str = "auto"
    threads: int = 0
    precision: str = "auto"
    compile: str = "none"

    def validate(self, prefix: str = "train") -> None:
        for key in ("epochs", "batch_size", "eval_batch_size"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{prefix}.{key}: must be >= 1, got {getattr(self, key)}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ConfigError(f"{prefix}.label_smoothing: must be in [0, 1), got {self.label_smoothing}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ConfigError(f"{prefix}.grad_clip: must be > 0 or null (off), got {self.grad_clip}")
        if self.threads < 0:
            raise ConfigError(f"{prefix}.threads: must be >= 0, got {self.threads}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"{prefix}.precision: must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.compile not in COMPILE_MODES:
            raise ConfigError(f"{prefix}.compile: must be one of {', '.join(COMPILE_MODES)}, got {self.compile!r}")
        if not (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")):
            raise ConfigError(f"{prefix}.device: must be auto, cpu, cuda or cuda:N, got {self.device!r}")


@dataclass
class RunConfig:
    """One training run. ``oialr.enabled: false`` gives the full-rank baseline."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    oialr: OIALRConfig = field(default_factory=OIALRConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def validate(self) -> RunConfig:
        for name in ("model", "data", "optim", "schedule", "oialr", "train"):
            getattr(self, name).validate(name)
        return self
