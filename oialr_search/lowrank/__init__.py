"""Low-rank layers, model conversion and the OIALR schedule."""

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
