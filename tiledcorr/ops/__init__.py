"""The public functions and their Module twins, one operation per module (as ``torchvision.ops``)."""

from .correlate import SpatialCorrelation, correlate
from .correlate_reduce import CorrelationReduce, correlate_reduce
from .lookup import CorrBlock, CorrelationLookup, correlate_lookup
from .plan import plan

__all__ = [
    "CorrBlock", "CorrelationLookup", "CorrelationReduce", "SpatialCorrelation", "correlate", "correlate_lookup",
    "correlate_reduce", "plan",
]
