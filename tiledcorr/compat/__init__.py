"""Drop-in replacements for the correlation layers in common use, one module per original.

* :mod:`.sampler`: ``spatial_correlation_sampler`` (plain sum, 5-D output).
* :mod:`.flownet`: FlowNet2's ``Correlation`` (centred window, divided by k*k*C).
* :mod:`.corrtorch`: the pure-PyTorch ``CorrTorch`` port (mean over channels).

``docs/migration.md`` gives the one-line change for each.
"""

from .corrtorch import CorrTorch, corr_torch
from .flownet import Correlation, FlowNetCorrelation, flownet_correlation
from .sampler import SpatialCorrelationSampler, spatial_correlation_sample

__all__ = [
    "CorrTorch", "Correlation", "FlowNetCorrelation", "SpatialCorrelationSampler", "corr_torch",
    "flownet_correlation", "spatial_correlation_sample",
]
