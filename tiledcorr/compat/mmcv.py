"""Drop-in for mmcv's ``mmcv.ops.Correlation`` (OpenMMLab, used by mmflow), on any device.

mmcv's CUDA kernel is a modified copy of ``spatial_correlation_sampler``'s: a
plain sum over ``C*kH*kW`` products, the kernel window anchored top-left,
``patch_size = 2*max_displacement + 1`` displacements per dimension spaced by
``dilation_patch``, output ``(B, 2*md+1, 2*md+1, oH, oW)``. It is therefore
the sampler with that patch size. Not to be confused with FlowNet2's
``Correlation`` (:class:`tiledcorr.Correlation`), which has the same class
name and a different meaning (centred window, divided by ``k*k*C``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .. import checks
from ..ops.common import repr_args
from ..typing import BudgetLike, IntOrTuple
from .sampler import spatial_correlation_sample


def mmcv_patch_size(max_displacement: Any) -> int:
    """mmcv's number of displacements per dimension, ``2*max_displacement + 1``.

    Raises:
        ArgumentTypeError: ``max_displacement`` is not an int (mmcv takes a single int).
        ArgumentValueError: ``max_displacement`` is negative.
    """
    return 2 * checks.check_int("max_displacement", max_displacement, minimum=0) + 1


def mmcv_correlation(
    input1: torch.Tensor,
    input2: torch.Tensor,
    kernel_size: IntOrTuple = 1,
    max_displacement: int = 1,
    stride: IntOrTuple = 1,
    padding: IntOrTuple = 0,
    dilation: IntOrTuple = 1,
    dilation_patch: IntOrTuple = 1,
    *,
    memory_budget: BudgetLike = None,
) -> torch.Tensor:
    """mmcv's ``Correlation`` as a function (mmcv itself has only the Module and its ``CorrelationFunction``).

    Definition (mmcv's; see ``docs/semantics.md``), with ``P = 2*max_displacement + 1``::

        out[b, ph, pw, h, w] = sum_c sum_{i<kH, j<kW} input1[b, c, y, x] * input2[b, c, y + dy, x + dx]
        y = h*strideH - padH + i*dilationH,  dy = (ph - max_displacement) * dilation_patchH  (likewise x, dx)

    i.e. ``spatial_correlation_sample(input1, input2, kernel_size, P, stride,
    padding, dilation, dilation_patch)``. The default ``padding`` is 0, as for
    mmcv's Module (its ``CorrelationFunction.forward`` defaults to 1).

    Args:
        input1: tensor of shape ``(B, C, H, W)``, any floating dtype and strides.
        input2: tensor of the same shape, dtype and device.
        kernel_size: size of the window summed over (int or ``(h, w)``).
        max_displacement: largest displacement index from the centre, an int
            (in units of ``dilation_patch`` pixels).
        stride: step between output positions (int or ``(h, w)``).
        padding: implicit zero padding of both inputs (>= 0).
        dilation: spacing of the kernel window.
        dilation_patch: spacing of the displacements.
        memory_budget: bound on the temporary workspace (tiledcorr's addition;
            see :func:`tiledcorr.correlate`).

    Returns:
        Tensor ``(B, 2*md+1, 2*md+1, oH, oW)``, dtype and device of ``input1``,
        ``oH = (H + 2*padH - ((kH-1)*dilationH + 1)) // strideH + 1`` (likewise ``oW``).

    Raises:
        ShapeError, ArgumentTypeError, ArgumentValueError, DeviceError: bad input.
        MemoryBudgetError: no tiling fits ``memory_budget``.

    Example:
        >>> x1, x2 = torch.randn(2, 16, 11, 13), torch.randn(2, 16, 11, 13)
        >>> mmcv_correlation(x1, x2, max_displacement=4).shape
        torch.Size([2, 9, 9, 11, 13])
    """
    return spatial_correlation_sample(
        input1, input2, kernel_size, mmcv_patch_size(max_displacement), stride, padding, dilation, dilation_patch,
        memory_budget=memory_budget,
    )


class MMCVCorrelation(nn.Module):
    """mmcv's ``mmcv.ops.Correlation`` (exported as ``tiledcorr.MMCVCorrelation``); see :func:`mmcv_correlation`.

    Same constructor (names, order, defaults) as mmcv's; ``memory_budget`` is
    tiledcorr's addition. ``max_displacement`` is checked when the Module is built.

    Shape:
        - input1, input2: ``(B, C, H, W)``
        - output: ``(B, 2*max_displacement+1, 2*max_displacement+1, oH, oW)``

    Example:
        >>> corr = MMCVCorrelation(max_displacement=4, stride=2)
        >>> corr(torch.randn(1, 32, 20, 24), torch.randn(1, 32, 20, 24)).shape
        torch.Size([1, 9, 9, 10, 12])
    """

    _ARGS = ("kernel_size", "max_displacement", "stride", "padding", "dilation", "dilation_patch", "memory_budget")

    def __init__(
        self, kernel_size: IntOrTuple = 1, max_displacement: int = 1, stride: IntOrTuple = 1,
        padding: IntOrTuple = 0, dilation: IntOrTuple = 1, dilation_patch: IntOrTuple = 1, *,
        memory_budget: BudgetLike = None,
    ) -> None:
        super().__init__()
        mmcv_patch_size(max_displacement)
        self.kernel_size, self.max_displacement, self.stride = kernel_size, max_displacement, stride
        self.padding, self.dilation, self.dilation_patch = padding, dilation, dilation_patch
        self.memory_budget = memory_budget

    def forward(self, input1: torch.Tensor, input2: torch.Tensor) -> torch.Tensor:
        return mmcv_correlation(
            input1, input2, self.kernel_size, self.max_displacement, self.stride, self.padding, self.dilation,
            self.dilation_patch, memory_budget=self.memory_budget,
        )

    def extra_repr(self) -> str:
        # Every argument of the original, as mmcv's own repr lists them; the budget when set.
        return repr_args(self, self._ARGS, {"memory_budget": None})
