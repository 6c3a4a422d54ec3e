"""Model factory: a small registry of our own models, falling back to any timm model by name."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from ..exceptions import ConfigError
from ._model_sizes import MINI_VIT, MLP, check_model_sizes

ModelBuilder = Callable[..., nn.Module]
_REGISTRY: dict[str, ModelBuilder] = {}


def register_model(name: str) -> Callable[[ModelBuilder], ModelBuilder]:
    """Register ``fn(num_classes=, in_chans=, img_size=, **kwargs) -> nn.Module`` under ``name``."""

    def deco(fn: ModelBuilder) -> ModelBuilder:
        _REGISTRY[name] = fn
        return fn

    return deco


def _timm():
    from .._compat import ensure_torchvision

    ensure_torchvision()
    import timm

    return timm


@register_model("mini_vit")
def mini_vit(*, num_classes: int, in_chans: int, img_size: int, embed_dim: int = MINI_VIT["embed_dim"],
             depth: int = MINI_VIT["depth"], num_heads: int = MINI_VIT["num_heads"], patch_size: int | None = None,
             mlp_ratio: float = 4.0, drop_rate: float = 0.0, **kwargs: object) -> nn.Module:
    """The paper's CIFAR-10 mini-ViT (ViT-B/16 with patch 8, depth 6, heads 6), scaled to the data.

    The patch defaults to img_size/4 (8 on 32 px, 7 on 28 px, 2 on 8 px), giving 16 patches.
    """
    check_model_sizes("mini_vit", {"embed_dim": embed_dim, "depth": depth, "num_heads": num_heads})
    patch = patch_size or max(1, img_size // 4)
    if img_size % patch:
        raise ConfigError(f"model.kwargs.patch_size: {patch} does not divide the image size {img_size}")
    _timm()
    from timm.models.vision_transformer import VisionTransformer

    return VisionTransformer(img_size=img_size, patch_size=patch, in_chans=in_chans, num_classes=num_classes,
                             embed_dim=embed_dim, depth=depth, num_heads=num_heads, mlp_ratio=mlp_ratio,
                             drop_rate=drop_rate, **kwargs)


@register_model("mlp")
def mlp(*, num_classes: int, in_chans: int, img_size: int, hidden: int = MLP["hidden"], depth: int = MLP["depth"],
        **_: object) -> nn.Module:
    """A plain MLP on flattened pixels; small and fast, for tests and smoke runs. Other kwargs are ignored, as
    they always were: the configs and kept weights of earlier studies carry some (a mini_vit's, after
    ``--set model.name=mlp``)."""
    check_model_sizes("mlp", {"hidden": hidden, "depth": depth})
    layers: list[nn.Module] = [nn.Flatten()]
    width = in_chans * img_size * img_size
    for _ in range(depth):
        layers += [nn.Linear(width, hidden), nn.GELU()]
        width = hidden
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


def _import_builder(name: str) -> ModelBuilder:
    """``package.module:function`` -> the function (a user's own model builder)."""
    import importlib

    module_name, _, attr = name.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"model.name: cannot import {module_name!r} ({exc})") from None
    builder = getattr(module, attr, None)
    if not callable(builder):
        raise ConfigError(f"model.name: {module_name!r} has no callable {attr!r}")
    return builder


def create_model(name: str, *, num_classes: int, in_chans: int, img_size: int, **kwargs: object) -> nn.Module:
    """Build a model: a registered name, ``module:function`` (called with num_classes, in_chans,
    img_size and the kwargs), or any timm model (``timm.create_model(name, pretrained=False)``)."""
    if ":" in name:
        return _import_builder(name)(num_classes=num_classes, in_chans=in_chans, img_size=img_size, **kwargs)
    if name in _REGISTRY:
        try:
            return _REGISTRY[name](num_classes=num_classes, in_chans=in_chans, img_size=img_size, **kwargs)
        except TypeError as exc:
            raise ConfigError(f"model.kwargs: {exc}") from None
    timm = _timm()
    if not timm.is_model(name):
        close = [m for m in timm.list_models(f"*{name}*")][:5]
        hint = f" (similar: {', '.join(close)})" if close else ""
        raise ConfigError(f"model.name: unknown model {name!r}; use {', '.join(_REGISTRY)} or a timm model{hint}")
    base = {"num_classes": num_classes, "in_chans": in_chans, **kwargs}
    try:
        # Most timm image models take img_size; convnets do not and reject it.
        return timm.create_model(name, pretrained=False, img_size=img_size, **base)
    except TypeError as exc:
        if "img_size" not in str(exc):
            raise ConfigError(f"model.kwargs: {exc}") from None
    try:
        return timm.create_model(name, pretrained=False, **base)
    except TypeError as exc:
        raise ConfigError(f"model.kwargs: {exc}") from None


def unbuildable(name: str, kwargs: dict, *, img_size: int) -> str | None:
    """Why no trial can build ``name`` with ``kwargs``, whatever its data, or None: an unknown model name,
    or a keyword the model does not take. Our models and timm's are built once on the meta device (no
    memory, no data, a fraction of a second); a user's ``module:function`` is imported and its signature
    checked, not called (what it keeps between calls would be made on the meta device). Any other failure
    depends on the data, or on what a search varies, and is left to the trials."""
    import inspect

    import torch

    try:
        if ":" in name:
            builder = _import_builder(name)
            try:  # the builder's own signature: a decorator's wrapper may take more than what it wraps
                inspect.signature(builder, follow_wrapped=False).bind(num_classes=10, in_chans=3,
                                                                      img_size=img_size, **kwargs)
            except TypeError as exc:
                return f"model.kwargs: {name}: {exc}" if "unexpected keyword argument" in str(exc) else None
            except ValueError:  # a builtin or C function without a signature: the trials judge it
                return None
            return None
        _timm()  # imported outside the meta device: tensors a module makes at import belong on no device
        with torch.device("meta"):
            create_model(name, num_classes=10, in_chans=3, img_size=img_size, **kwargs)
    except ConfigError as exc:
        message = str(exc)
        if message.startswith("model.name:") or "unexpected keyword argument" in message:
            return message
    except Exception:  # noqa: BLE001 - the trials judge it, with their data
        return None
    return None


def model_names() -> list[str]:
    return sorted(_REGISTRY)
