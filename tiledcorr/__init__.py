"""tiledcorr: exact spatial correlation (cost volumes) in pure PyTorch, within a memory budget."""

from .budget import resolve_budget
from .compat import (
    Correlation,
    CorrTorch,
    FlowNetCorrelation,
    SpatialCorrelationSampler,
    corr_torch,
    flownet_correlation,
    spatial_correlation_sample,
)
from .errors import (
    ArgumentTypeError,
    ArgumentValueError,
    DeviceError,
    MemoryBudgetError,
    ShapeError,
    TiledCorrError,
)
from .ops import CorrBlock, CorrelationLookup, CorrelationReduce, SpatialCorrelation, correlate, correlate_lookup, correlate_reduce, plan
from .planning.lookup import LookupPlan, plan_lookup
from .ops.flow import displacement_to_flow, index_to_displacement, volume_to_flow
from .compat.mmcv import MMCVCorrelation, mmcv_correlation
from .planning.planner import Plan
from .reductions import TopK
from .version import __version__


__all__ = [
    "__version__",
    "CorrelationReduce", "TopK", "correlate_reduce",
    "CorrBlock", "CorrelationLookup", "LookupPlan", "correlate_lookup", "plan_lookup",
    "Correlation", "CorrTorch", "FlowNetCorrelation", "SpatialCorrelationSampler", "corr_torch", "flownet_correlation",
    "spatial_correlation_sample",
    "ArgumentTypeError", "ArgumentValueError", "DeviceError", "MemoryBudgetError", "Plan", "ShapeError",
    "SpatialCorrelation", "TiledCorrError", "correlate", "plan", "resolve_budget",
    "MMCVCorrelation", "mmcv_correlation", "displacement_to_flow", "index_to_displacement", "volume_to_flow",
]
