"""Data augmentation: the ``data.augment`` config section, timm's per-image transforms, and the per-batch
Mixup/CutMix with the loss that goes with it.

Per image (``pipeline: timm``): ``timm.data.create_transform`` — RandomResizedCrop (scale, ratio), flip,
RandAugment/AutoAugment (``auto_augment``), colour jitter, normalization, random erasing. Per batch, on the
device: ``timm.data.Mixup`` (Mixup/CutMix), which turns labels into soft targets, so the loss becomes
``timm.loss.SoftTargetCrossEntropy``; see :func:`build_batch_ops`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from ..exceptions import ConfigError

if TYPE_CHECKING:
    from ._config import RunConfig

PIPELINES = ("timm", "shift")
INTERPOLATIONS = ("bilinear", "bicubic", "nearest", "lanczos", "box", "hamming", "random")
RE_MODES = ("const", "rand", "pixel")
MIXUP_MODES = ("batch", "pair", "elem")

BatchTransform = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
Criterion = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _timm_data():
    from .._compat import ensure_torchvision

    ensure_torchvision()  # timm imports torchvision, which needs the CPU-torch shim first
    import timm.data

    return timm.data


@dataclass(frozen=True)  # frozen: hashable, so the search can key its data cache on it
class AugmentConfig:
    """The ``data.augment`` section. A written section turns augmentation on (``enabled: true``);
    ``data.augment: false`` (or null, or no section) turns it off, and ``true`` is the shorthand for
    ``{enabled: true, pipeline: shift}`` — what ``augment: true`` did before there was a section.

    ``pipeline``: ``timm`` — per-image ``timm.data.create_transform`` (the in-memory sets are then handed
    out as PIL images, one per item); ``shift`` — for the in-memory sets (mnist, digits, cifar10) the fast
    tensor path, a random translation by up to img_size/8 px plus the horizontal flip on whole batches.
    ImageFolder data is decoded per image anyway and always takes the timm pipeline.

    The crop is timm's RandomResizedCrop over ``scale_min..scale_max`` of the area and aspect ratios
    ``ratio_min..ratio_max`` (four scalars rather than two pairs: the config loader and the search's
    dimensions deal in scalars). ``hflip`` null = 0.5 on colour images and 0 on the digit sets (a mirrored
    digit is not a digit). ``crop_pct``: evaluation of ImageFolder data resizes to img_size/crop_pct and
    centre-crops (null: timm's 0.875); the in-memory sets are evaluated on the whole image.

    Mixup/CutMix run per batch on the device when ``mixup_alpha`` or ``cutmix_alpha`` > 0 (timm.data.Mixup
    with ``mixup_prob``, ``switch_prob``, ``mixup_mode``); ``train.label_smoothing`` then goes into the
    soft targets.
    """

    enabled: bool = True
    pipeline: str = "timm"
    hflip: float | None = None
    auto_augment: str | None = None
    scale_min: float = 0.08
    scale_max: float = 1.0
    ratio_min: float = 3 / 4
    ratio_max: float = 4 / 3
    color_jitter: float = 0.0
    interpolation: str = "bilinear"
    re_prob: float = 0.0
    re_mode: str = "pixel"
    re_count: int = 1
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    mixup_prob: float = 1.0
    switch_prob: float = 0.5
    mixup_mode: str = "batch"
    crop_pct: float | None = None

    @classmethod
    def off(cls) -> AugmentConfig:
        return cls(enabled=False)

    @classmethod
    def from_shorthand(cls, value: Any, key: str) -> dict:
        """The mapping a non-mapping ``data.augment`` value stands for (the config loader calls this):
        true -> the previous random shift + flip; false or null -> off."""
        if value is None or value is False:
            return {"enabled": False}
        if value is True:
            return {"enabled": True, "pipeline": "shift"}
        if isinstance(value, dict):
            return value
        raise ConfigError(f"{key}: expected true, false or a mapping of augmentation keys, got {value!r}")

    @property
    def mixes(self) -> bool:
        """Whether training batches are mixed (Mixup/CutMix) and so have soft targets."""
        return self.enabled and self.mixup_prob > 0 and (self.mixup_alpha > 0 or self.cutmix_alpha > 0)

    @property
    def per_image(self) -> bool:
        """Whether in-memory images go through timm's per-image transforms (else the tensor path)."""
        return self.enabled and self.pipeline == "timm"

    def hflip_for(self, in_chans: int) -> float:
        if not self.enabled:
            return 0.0
        return self.hflip if self.hflip is not None else (0.5 if in_chans == 3 else 0.0)

    def validate(self, prefix: str = "data.augment") -> None:
        def probability(key: str) -> None:
            value = getattr(self, key)
            if value is not None and not 0.0 <= value <= 1.0:
                raise ConfigError(f"{prefix}.{key}: must be in [0, 1], got {value}")

        def one_of(key: str, choices: tuple[str, ...]) -> None:
            if getattr(self, key) not in choices:
                raise ConfigError(f"{prefix}.{key}: must be one of {', '.join(choices)}, got {getattr(self, key)!r}")

        one_of("pipeline", PIPELINES)
        one_of("interpolation", INTERPOLATIONS)
        one_of("re_mode", RE_MODES)
        one_of("mixup_mode", MIXUP_MODES)
        for key in ("hflip", "re_prob", "mixup_prob", "switch_prob"):
            probability(key)
        if not 0.0 < self.scale_min <= self.scale_max <= 1.0:
            key = "scale_min" if not 0.0 < self.scale_min <= 1.0 else "scale_max"
            raise ConfigError(f"{prefix}.{key}: need 0 < scale_min <= scale_max <= 1 (fractions of the image area), "
                              f"got {self.scale_min}..{self.scale_max}")
        if not 0.0 < self.ratio_min <= self.ratio_max:
            key = "ratio_min" if not self.ratio_min > 0 else "ratio_max"
            raise ConfigError(f"{prefix}.{key}: need 0 < ratio_min <= ratio_max (aspect ratios), "
                              f"got {self.ratio_min}..{self.ratio_max}")
        for key in ("color_jitter", "mixup_alpha", "cutmix_alpha"):
            if getattr(self, key) < 0:
                raise ConfigError(f"{prefix}.{key}: must be >= 0, got {getattr(self, key)}")
        if self.re_count < 1:
            raise ConfigError(f"{prefix}.re_count: must be >= 1, got {self.re_count}")
        if self.crop_pct is not None and not 0.0 < self.crop_pct <= 1.0:
            raise ConfigError(f"{prefix}.crop_pct: must be in (0, 1] or null (timm's 0.875), got {self.crop_pct}")
        if self.auto_augment is not None:
            problem = _auto_augment_problem(self.auto_augment)
            if problem:
                raise ConfigError(f"{prefix}.auto_augment: {self.auto_augment!r} is not a timm policy ({problem}); "
                                  "e.g. rand-m9-mstd0.5, or null for none")

    def tensor_path_ignores(self) -> list[str]:
        """The per-image keys set here that the ``shift`` tensor path does not apply."""
        defaults = {f.name: f.default for f in fields(self)}
        keys = ("auto_augment", "color_jitter", "re_prob", "scale_min", "scale_max", "ratio_min", "ratio_max")
        return [k for k in keys if getattr(self, k) != defaults[k]]


@functools.cache
def _auto_augment_problem(policy: str) -> str | None:
    """Why timm cannot build ``policy``, or None (building it is the only complete check)."""
    try:
        _timm_data().create_transform(32, is_training=True, auto_augment=policy)
    except Exception as exc:  # noqa: BLE001 - timm signals a bad policy string with assorted errors
        return str(exc) or type(exc).__name__
    return None


# -- per image ------------------------------------------------------------------------------------
def _posterize(img: Any, bits_to_keep: int, **_: object) -> Any:
    """timm's posterize op, also for 0 bits. timm's levels reach 0 bits (the increasing op of the "-inc1"
    policies at magnitude 10, which rand-m9-mstd0.5-inc1 samples now and then; the plain op below
    magnitude 2.5); Pillow >= 13 rejects that, where older Pillow returned the black image this returns."""
    from PIL import Image, ImageOps

    if bits_to_keep >= 8:
        return img
    if bits_to_keep <= 0:
        return Image.new(img.mode, img.size)
    return ImageOps.posterize(img, bits_to_keep)


def _patch_posterize(transform: Any) -> Any:
    """Swap :func:`_posterize` into the auto-augment ops of a timm transform (RandAugment, AutoAugment,
    AugMix)."""
    from timm.data import auto_augment as aa

    for t in getattr(transform, "transforms", [transform]):
        ops = list(getattr(t, "ops", []))
        for sub_policy in getattr(t, "policy", []):
            ops += list(sub_policy)
        for op in ops:
            if getattr(op, "aug_fn", None) is aa.posterize:
                op.aug_fn = _posterize
    return transform


def train_transform(cfg: AugmentConfig, img_size: int, in_chans: int, mean: tuple[float, ...],
                    std: tuple[float, ...]) -> Callable:
    """timm's training transform: PIL image -> normalized float tensor (in_chans, img_size, img_size)."""
    td = _timm_data()
    transform = td.create_transform(
        (in_chans, img_size, img_size), is_training=True, scale=(cfg.scale_min, cfg.scale_max),
        ratio=(cfg.ratio_min, cfg.ratio_max), hflip=cfg.hflip_for(in_chans), color_jitter=cfg.color_jitter or None,
        auto_augment=cfg.auto_augment, interpolation=cfg.interpolation, mean=mean, std=std, re_prob=cfg.re_prob,
        re_mode=cfg.re_mode, re_count=cfg.re_count)
    return _patch_posterize(transform)


def eval_transform(cfg: AugmentConfig, img_size: int, mean: tuple[float, ...], std: tuple[float, ...]) -> Callable:
    """timm's evaluation transform: resize to img_size/crop_pct, centre crop, normalize."""
    # "random" picks the training crop's interpolation per image; evaluation uses bicubic, as timm's recipes do
    interpolation = "bicubic" if cfg.interpolation == "random" else cfg.interpolation
    return _timm_data().create_transform(img_size, is_training=False, crop_pct=cfg.crop_pct,
                                         interpolation=interpolation, mean=mean, std=std)


class ImageDataset(Dataset):
    """In-memory uint8 images handed out one PIL image at a time through ``transform`` (timm's
    transforms take PIL images). ``images``: N×H×W×C uint8 (C = 1 or 3)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform: Callable) -> None:
        self.images = np.ascontiguousarray(images)
        self.labels = np.asarray(labels, dtype=np.int64)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        from PIL import Image

        img = self.images[i]
        pil = Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img)  # "L" for grey, "RGB" for colour
        return self.transform(pil), int(self.labels[i])


# -- per batch ------------------------------------------------------------------------------------
class MixBatch:
    """``(x, y) -> (x, soft targets)``: timm's Mixup/CutMix of a training batch, on whatever device it is.

    x is mixed in place. timm's Mixup needs an even batch; of an odd one (a last partial batch, or a
    rank's shard) the last sample is left unmixed with its label-smoothed one-hot target.
    """

    def __init__(self, cfg: AugmentConfig, num_classes: int, label_smoothing: float) -> None:
        self.num_classes, self.label_smoothing = num_classes, label_smoothing
        self.mixup = _timm_data().Mixup(
            mixup_alpha=cfg.mixup_alpha, cutmix_alpha=cfg.cutmix_alpha, prob=cfg.mixup_prob,
            switch_prob=cfg.switch_prob, mode=cfg.mixup_mode, label_smoothing=label_smoothing,
            num_classes=num_classes)

    def _plain(self, y: torch.Tensor) -> torch.Tensor:
        from timm.data.mixup import mixup_target

        return mixup_target(y, self.num_classes, 1.0, self.label_smoothing)

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n = len(y)
        if n % 2 == 0:
            return self.mixup(x, y)
        if n == 1:
            return x, self._plain(y)
        _, head = self.mixup(x[:-1], y[:-1])  # a view: mixes x's first n-1 rows in place
        return x, torch.cat([head, self._plain(y[-1:])])


def build_batch_ops(config: RunConfig, num_classes: int) -> tuple[BatchTransform | None, Criterion]:
    """What the trainer does with each training batch on the device, and its loss.

    With Mixup/CutMix on: ``(MixBatch, SoftTargetCrossEntropy)`` — ``train.label_smoothing`` is applied
    inside the mixed targets, as timm does. Otherwise ``(None, cross-entropy with label smoothing)`` on the
    integer labels.
    """
    aug, smoothing = config.data.augment, config.train.label_smoothing
    if aug.mixes:
        _timm_data()  # the torchvision shim must precede timm.loss's import of timm
        from timm.loss import SoftTargetCrossEntropy

        return MixBatch(aug, num_classes, smoothing), SoftTargetCrossEntropy()
    return None, functools.partial(F.cross_entropy, label_smoothing=smoothing)
