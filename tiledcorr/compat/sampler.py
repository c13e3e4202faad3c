"""Drop-in for ``spatial_correlation_sampler`` 0.5.0: same names, argument order, defaults, 5-D output."""

from __future__ import annotations

import torch
from torch import nn

from .. import checks
from ..library import deploy, dispatch
from ..library.deploy import DeployConfig
from ..typing import BudgetLike, IntOrTuple
from ..ops.common import Deployable, deploy_config, device_type_of, no_autocast, repr_args
from ..ops.correlate import correlate


def spatial_correlation_sample(
    input1: torch.Tensor,
    input2: torch.Tensor,
    kernel_size: IntOrTuple = 1,
    patch_size: IntOrTuple = 1,
    stride: IntOrTuple = 1,
    padding: IntOrTuple = 0,
    dilation: IntOrTuple = 1,
    dilation_patch: IntOrTuple = 1,
    *,
    memory_budget: BudgetLike = None,
) -> torch.Tensor:
    """``spatial_correlation_sampler.spatial_correlation_sample``, computed in tiles.

    Convention (that of the original): a plain sum over ``C*kH*kW`` products,
    no normalisation; the kernel window is anchored at its top-left corner;
    zero outside the images; displacement ``(dy, dx) = ((ph - (PH-1)//2) *
    dilation_patchH, (pw - (PW-1)//2) * dilation_patchW)``, ``ph`` vertical::

        out[b, ph, pw, h, w] = sum_c sum_{i<kH, j<kW} input1[b, c, y, x] * input2[b, c, y + dy, x + dx]
        y = h*strideH - padH + i*dilationH,   x = w*strideW - padW + j*dilationW

    ``out.reshape(B, PH*PW, oH, oW)`` is the dy-major channel order of
    FlowNet2. Every parameter is an int or an ``(h, w)`` pair. Where the
    original crashes or reads out of bounds (mismatched shapes or dtypes, 5-D
    input, stride 0, negative padding) this raises an exception instead. Like
    the original it takes images only; :func:`tiledcorr.correlate` also takes volumes.
    Like the original it computes in the inputs' dtype under ``torch.autocast``
    (:func:`tiledcorr.correlate` follows autocast, as matmul does).

    Args:
        input1: tensor of shape ``(B, C, H, W)``, any floating dtype and strides.
        input2: tensor of the same shape, dtype and device.
        kernel_size: size of the window summed over at each position.
        patch_size: number of displacements ``(PH, PW)``.
        stride: step between output positions.
        padding: implicit zero padding of both inputs (>= 0).
        dilation: spacing of the kernel window.
        dilation_patch: spacing of the displacements.
        memory_budget: bound on the temporary workspace (tiledcorr's addition;
            see :func:`tiledcorr.correlate`).

    Returns:
        Tensor of shape ``(B, PH, PW, oH, oW)``, dtype and device of ``input1``,
        contiguous, ``oH = (H + 2*padH - ((kH-1)*dilationH + 1)) // strideH + 1``
        (likewise ``oW``).

    Raises:
        ShapeError, ArgumentTypeError, ArgumentValueError, DeviceError: bad input
            (including inputs that are not 4-D).
        MemoryBudgetError: no tiling fits ``memory_budget``.

    Example:
        >>> x1, x2 = torch.randn(1, 512, 19, 34), torch.randn(1, 512, 19, 34)
        >>> spatial_correlation_sample(x1, x2, 1, 9).shape
        torch.Size([1, 9, 9, 19, 34])
    """
    how = deploy.mode()
    if how != "eager":  # torch.jit.trace, torch.export, ONNX export (docs/deployment.md)
        config = deploy_config((kernel_size, patch_size, stride, padding, dilation, dilation_patch), None,
                               memory_budget, ndims=(2,))
        return dispatch.run_volume(how, config, input1, input2, False)
    checks.check_inputs(input1, input2, spatial_dims=(2,))
    # The original (a C++ extension autocast does not know) computes in the inputs' dtype under autocast.
    with no_autocast(device_type_of(input1)):
        return correlate(
            input1, input2, kernel_size, patch_size, stride, padding, dilation, dilation_patch,
            memory_budget=memory_budget,
        )


class SpatialCorrelationSampler(Deployable, nn.Module):
    """``spatial_correlation_sampler.SpatialCorrelationSampler``; see :func:`spatial_correlation_sample`.

    Shape:
        - input1, input2: ``(B, C, H, W)``
        - output: ``(B, PH, PW, oH, oW)``

    Example:
        >>> sampler = SpatialCorrelationSampler(kernel_size=1, patch_size=9)
        >>> x1, x2 = torch.randn(1, 512, 19, 34), torch.randn(1, 512, 19, 34)
        >>> sampler(x1, x2).reshape(1, 81, 19, 34).shape
        torch.Size([1, 81, 19, 34])
    """

    _ARGS = ("kernel_size", "patch_size", "stride", "padding", "dilation", "dilation_patch", "memory_budget")

    def __init__(
        self, kernel_size: IntOrTuple = 1, patch_size: IntOrTuple = 1, stride: IntOrTuple = 1,
        padding: IntOrTuple = 0, dilation: IntOrTuple = 1, dilation_patch: IntOrTuple = 1, *,
        memory_budget: BudgetLike = None,
    ) -> None:
        super().__init__()
        self.kernel_size, self.patch_size, self.stride = kernel_size, patch_size, stride
        self.padding, self.dilation, self.dilation_patch = padding, dilation, dilation_patch
        self.memory_budget = memory_budget

    def forward(self, input1: torch.Tensor, input2: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_scripting():
            return deploy.correlate(input1, input2, self._script_params, self._script_normalize, self._script_budget,
                                    self._script_ndims, False)
        return self._call(input1, input2)

    @torch.jit.unused
    def _call(self, input1: torch.Tensor, input2: torch.Tensor) -> torch.Tensor:
        return spatial_correlation_sample(
            input1, input2, self.kernel_size, self.patch_size, self.stride, self.padding, self.dilation,
            self.dilation_patch, memory_budget=self.memory_budget,
        )

    def deploy_config(self) -> DeployConfig:
        return deploy_config((self.kernel_size, self.patch_size, self.stride, self.padding, self.dilation,
                              self.dilation_patch), None, self.memory_budget, ndims=(2,))

    def extra_repr(self) -> str:
        # Every argument of the original (so the repr reads like its constructor call); the budget when set.
        return repr_args(self, self._ARGS, {"memory_budget": None})
