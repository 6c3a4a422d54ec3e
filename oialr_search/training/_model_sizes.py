"""The sizes our own models take in ``model.kwargs``, checked without torch, so that a search whose base
config gives every trial a model its builder refuses is refused before anything is written (not found
trial by trial). Sizes that depend on the data (a patch that divides the image) are checked by the
builders, which know the image size."""

from __future__ import annotations

from collections.abc import Collection, Mapping

from ..exceptions import ConfigError

MINI_VIT = {"embed_dim": 192, "depth": 6, "num_heads": 6}  # the builder's defaults
MLP = {"hidden": 128, "depth": 2}
_LEAST = {"mini_vit": {"embed_dim": 1, "depth": 0, "num_heads": 1}, "mlp": {"hidden": 1, "depth": 0}}
_DEFAULTS = {"mini_vit": MINI_VIT, "mlp": MLP}


def check_model_sizes(name: str, kwargs: Mapping, *, skip: Collection[str] = ()) -> None:
    """Raise ConfigError for a size in ``kwargs`` that the builder of our model ``name`` refuses (timm's and
    a user's own models are checked when they are built). ``skip``: kwargs a search sets per trial,
    judged then, alone or (embed_dim with num_heads) together."""
    if name not in _DEFAULTS:
        return
    sizes = {**_DEFAULTS[name], **{k: v for k, v in kwargs.items() if k in _DEFAULTS[name]}}
    for key, least in _LEAST[name].items():
        value = sizes[key]
        if key not in skip and (not isinstance(value, int) or isinstance(value, bool) or value < least):
            raise ConfigError(f"model.kwargs.{key}: must be an integer >= {least}, got {value!r}")
    if name == "mini_vit" and not {"embed_dim", "num_heads"} & set(skip) \
            and sizes["embed_dim"] % sizes["num_heads"]:
        raise ConfigError(f"model.kwargs.embed_dim: {sizes['embed_dim']} is not divisible by "
                          f"num_heads={sizes['num_heads']}")
