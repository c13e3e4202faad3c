"""The naive unfold approach, kept as the baseline tiledcorr is measured against.

This is how the pure-PyTorch ports of ``spatial_correlation_sampler`` compute
a cost volume: pad, materialise every input2 window the output needs as one
``(B, C*kH*kW, PH*PW, oH*oW)`` tensor, multiply it by input1's kernel windows
and sum over the first axis. It has the exact ``spatial_correlation_sampler``
semantics (see :func:`tiledcorr.correlate`) and is differentiable by autograd,
but it holds two tensors of that size at once (the windows and their product
with input1), ``C*kH*kW`` times the output each. The profiler and the benchmarks
use it to show what the tiled engine saves; nothing else calls it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import ShapeError
from ..planning.planner import Plan, make_geometry
from ..typing import IntOrTuple

#: Tensors of the naive tensor's size alive at the forward's peak (windows, product).
FORWARD_COPIES = 2
#: The same during the backward (windows saved, gradient of the product, gradient of the windows).
BACKWARD_COPIES = 3


def naive_correlate(
    input1: torch.Tensor,
    input2: torch.Tensor,
    kernel_size: IntOrTuple = 1,
    patch_size: IntOrTuple = 1,
    stride: IntOrTuple = 1,
    padding: IntOrTuple = 0,
    dilation: IntOrTuple = 1,
    dilation_patch: IntOrTuple = 1,
) -> torch.Tensor:
    """``spatial_correlation_sampler`` by materialising every window (memory-hungry).

    Args:
        input1: tensor of shape ``(B, C, H, W)``.
        input2: tensor of the same shape, dtype and device.
        kernel_size, patch_size, stride, padding, dilation, dilation_patch: an
            int or an ``(h, w)`` pair each, as in :func:`tiledcorr.correlate`.

    Returns:
        Tensor of shape ``(B, PH, PW, oH, oW)`` in ``input1``'s dtype: the plain
        sum over ``C*kH*kW`` products, zero outside the images.

    Raises:
        ShapeError, ArgumentTypeError, ArgumentValueError: bad shapes or parameters.
    """
    g = make_geometry(tuple(input1.shape), tuple(input2.shape), kernel_size, patch_size, stride, padding, dilation, dilation_patch)
    if g.ndim != 2:
        raise ShapeError(f"naive_correlate takes inputs of shape (B, C, H, W), got {tuple(input1.shape)}")
    (kH, kW), (PH, PW), (sH, sW) = g.kernel, g.patch, g.stride
    (pH, pW), (lH, lW), (qH, qW) = g.padding, g.dilation, g.dilation_patch
    (RH, RW), (oH, oW) = g.radius, g.out_size
    B, C = g.batch, g.channels
    if oH == 0 or oW == 0:
        return input1.new_zeros(g.out_shape)

    # input1's kernel windows: (B, C*kH*kW, oH*oW), ordered (c, i, j).
    x1 = F.unfold(input1, (kH, kW), dilation=(lH, lW), padding=(pH, pW), stride=(sH, sW))
    # input2 padded so that every displaced window lies inside: the zero
    # displacement starts RH*qH rows (RW*qW columns) after the padded origin.
    x2 = F.pad(input2, (pW + RW * qW, pW + (PW - 1 - RW) * qW, pH + RH * qH, pH + (PH - 1 - RH) * qH))
    # Strided views, no copy yet: displacements, then kernel windows at the output positions.
    x2 = x2.unfold(2, (PH - 1) * qH + 1, 1)[..., ::qH]  # (B, C, H+2pH, W', PH)
    x2 = x2.unfold(3, (PW - 1) * qW + 1, 1)[..., ::qW]  # (B, C, H+2pH, W+2pW, PH, PW)
    x2 = x2.unfold(2, (kH - 1) * lH + 1, sH)[..., ::lH]  # (B, C, oH, W+2pW, PH, PW, kH)
    x2 = x2.unfold(3, (kW - 1) * lW + 1, sW)[..., ::lW]  # (B, C, oH, oW, PH, PW, kH, kW)
    # The materialisation: (B, C*kH*kW, PH*PW, oH*oW), C*kH*kW times the output.
    windows = x2.permute(0, 1, 6, 7, 4, 5, 2, 3).reshape(B, C * kH * kW, PH * PW, oH * oW)
    out = (x1.unsqueeze(2) * windows).sum(1)  # (B, PH*PW, oH*oW)
    return out.reshape(g.out_shape)


def naive_peak_bytes(plan: Plan, *, backward: bool = False) -> int:
    """Predicted peak memory of :func:`naive_correlate` for the problem of ``plan``.

    Args:
        plan: a plan for the same shapes, parameters and dtype.
        backward: predict the forward and backward together.

    Returns:
        Bytes: the copies of ``plan.naive_bytes`` alive at once, plus the output.
    """
    copies = BACKWARD_COPIES if backward else FORWARD_COPIES
    return copies * plan.naive_bytes + plan.output_bytes
