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
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from ._augment_config import AugmentConfig, _timm_data

if TYPE_CHECKING:
    from ._config import RunConfig

BatchTransform = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
Criterion = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


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
