"""The ``data.augment`` section of a run config (no torch: the config, and so ``export`` and the search's
checks of a space, load without it). What it builds is in ``_augment``."""

from __future__ import annotations

import functools
from dataclasses import dataclass, fields, replace
from typing import Any

from ..exceptions import ConfigError

PIPELINES = ("timm", "shift")
INTERPOLATIONS = ("bilinear", "bicubic", "nearest", "lanczos", "box", "hamming", "random")
RE_MODES = ("const", "rand", "pixel")
MIXUP_MODES = ("batch", "pair", "elem")


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

    def for_loading(self) -> AugmentConfig:
        """This section with the Mixup/CutMix keys at their defaults: those run per batch in the trainer, so
        two sections that differ only there load the same data set (the search's data cache keys on this)."""
        return replace(self, mixup_alpha=0.0, cutmix_alpha=0.0, mixup_prob=1.0, switch_prob=0.5, mixup_mode="batch")

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
