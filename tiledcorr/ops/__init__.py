"""The public functions and their Module twins, one operation per module (as ``torchvision.ops``)."""

from .correlate import SpatialCorrelation, correlate
from .correlate_reduce import CorrelationReduce, correlate_reduce
from .plan import plan

__all__ = ["CorrelationReduce", "SpatialCorrelation", "correlate", "correlate_reduce", "plan"]
