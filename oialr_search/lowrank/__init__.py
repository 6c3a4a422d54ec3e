"""Low-rank layers, model conversion and the OIALR schedule."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

if TYPE_CHECKING:  # the public names; at run time each is imported from its module on first use (_lazy), so
    # the run config's OIALRConfig comes without torch
    from ._compact import compact_model, dense_parameter_count, export_compact, factor_pays, parameter_count
    from ._config import OIALRConfig
    from ._convert import EligibleWeight, convert_to_low_rank, eligible_weights, low_rank_factors
    from ._factor import LowRankWeight, Rotation, ceil_layers
    from ._layers import LowRankConv, LowRankLinear, LowRankMultiheadAttention
    from ._oialr import OIALR, ParameterCounts, UpdateRecord, count_parameters

__all__ = [
    "OIALR",
    "EligibleWeight",
    "LowRankConv",
    "LowRankLinear",
    "LowRankMultiheadAttention",
    "LowRankWeight",
    "OIALRConfig",
    "ParameterCounts",
    "Rotation",
    "UpdateRecord",
    "ceil_layers",
    "compact_model",
    "convert_to_low_rank",
    "count_parameters",
    "dense_parameter_count",
    "eligible_weights",
    "export_compact",
    "factor_pays",
    "low_rank_factors",
    "parameter_count",
]

__getattr__, __dir__ = lazy_exports(__name__, __file__)
