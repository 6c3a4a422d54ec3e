"""oialr-search: OIALR training and hyperparameter search."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import device as _device
    from torch import nn

    from .training import RunConfig

__version__ = "0.1.0"
__all__ = ["__version__", "load_model"]


def load_model(config: dict | RunConfig | str | Path | None, weights: str | Path, *,
               device: str | _device = "cpu") -> nn.Module:
    """The trained model of a trial's weights file (``oialr-search export --weights model.pt``), in eval mode.

    ``config``: the trial's run config (a dict, a RunConfig, or a YAML path such as ``export -o``'s file;
    None: the one stored in the weights file). See :func:`oialr_search.training.load_model`; torch is
    imported only when this is called, so ``import oialr_search`` stays light.
    """
    from .training import load_model as _load

    return _load(config, weights, device=device)

