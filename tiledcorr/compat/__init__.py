"""Drop-in replacements for the correlation layers in common use, one module per original.

* :mod:`.sampler`: ``spatial_correlation_sampler`` (plain sum, 5-D output).
* :mod:`.flownet`: FlowNet2's ``Correlation`` (centred window, divided by k*k*C).
* :mod:`.corrtorch`: the pure-PyTorch ``CorrTorch`` port (mean over channels).
* :mod:`.mmcv`: mmcv's ``Correlation`` (the sampler with ``patch_size = 2*max_displacement + 1``).
* :mod:`.install`: :func:`install` makes ``import spatial_correlation_sampler`` give :mod:`.sampler`,
  for code you do not own.

``docs/migration.md`` gives the one-line change for each.
"""

from .corrtorch import CorrTorch, corr_torch
from .flownet import Correlation, FlowNetCorrelation, flownet_correlation
from .install import SamplerAlreadyImportedError, install, is_installed, uninstall
from .mmcv import MMCVCorrelation, mmcv_correlation
from .sampler import SpatialCorrelationSampler, spatial_correlation_sample

__all__ = [
    "CorrTorch", "Correlation", "FlowNetCorrelation", "SpatialCorrelationSampler", "corr_torch",
    "flownet_correlation", "spatial_correlation_sample",
    "MMCVCorrelation", "SamplerAlreadyImportedError", "install", "is_installed", "mmcv_correlation", "uninstall",
]
