"""The cost volume: :func:`correlate` and its Module twin :class:`SpatialCorrelation`."""

from __future__ import annotations

import torch
from torch import nn

from .. import checks
from ..geometry import Geometry
from ..library import deploy, dispatch
from ..library.common import geometry_args, operator_args
from ..library.correlate import correlate_op
from ..library.registration import call
from ..library.deploy import DeployConfig
from ..planning.planner import Plan, make_geometry
from ..typing import BudgetLike, IntOrTuple, Normalize
from .common import (Deployable, check_plan, deploy_config, device_type_of, no_autocast, normalization_scale, prepare_inputs,
                     repr_args)


def correlate(
    input1: torch.Tensor,
    input2: torch.Tensor,
    kernel_size: IntOrTuple = 1,
    patch_size: IntOrTuple = 1,
    stride: IntOrTuple = 1,
    padding: IntOrTuple = 0,
    dilation: IntOrTuple = 1,
    dilation_patch: IntOrTuple = 1,
    *,
    normalize: Normalize = None,
    flatten: bool = False,
    memory_budget: BudgetLike = None,
    plan: Plan | None = None,
) -> torch.Tensor:
    """Spatial correlation (cost volume) of two feature maps, computed in tiles.

    Exactly the semantics of ``spatial_correlation_sampler`` (see
    ``docs/semantics.md``): for output position ``(h, w)`` and displacement
    ``(dy, dx) = ((ph - (PH-1)//2) * dilation_patchH, (pw - (PW-1)//2) * dilation_patchW)``::

        out[b, ph, pw, h, w] = sum_c sum_{i<kH, j<kW} input1[b, c, y, x] * input2[b, c, y + dy, x + dx]
        y = h*strideH - padH + i*dilationH,   x = w*strideW - padW + j*dilationW

    with zeros outside the images (implicit zero padding), the kernel window
    anchored at its top-left. Every parameter is an int or an ``(h, w)`` pair
    (a triple for volumes). Half-precision inputs are accumulated in float32.

    Args:
        input1: tensor of shape ``(B, C, H, W)`` (or ``(B, C, D, H, W)``).
        input2: tensor of the same shape, dtype and device.
        kernel_size: size of the window summed over at each position.
        patch_size: number of displacements along each dimension.
        stride: step between output positions.
        padding: implicit zero padding of both inputs.
        dilation: spacing of the kernel window.
        dilation_patch: spacing of the displacements.
        normalize: ``None`` (plain sum), ``"channels"`` (/C),
            ``"kernel_channels"`` (/(k*k*C)) or ``"sqrt_channels"`` (/sqrt(C)).
        flatten: return ``(B, PH*PW, oH, oW)`` (dy-major) instead of 5-D.
        memory_budget: bound on the temporary workspace: ``None`` (half of the
            free memory), bytes, ``"512MiB"``-style strings, or a fraction in (0, 1].
        plan: a ready :class:`tiledcorr.Plan` (overrides ``memory_budget``).

    Returns:
        Tensor of shape ``(B, PH, PW, oH, oW)`` (``(B, PH*PW, oH, oW)`` with
        ``flatten``), dtype and device of ``input1``, contiguous, with
        ``oH = (H + 2*padH - ((kH-1)*dilationH + 1)) // strideH + 1``.

    Raises:
        ShapeError, ArgumentTypeError, ArgumentValueError, DeviceError: bad input.
        MemoryBudgetError: no tiling fits ``memory_budget``, or the output alone
            does not fit in the device's free memory.

    Example:
        >>> x1, x2 = torch.randn(2, 64, 48, 64), torch.randn(2, 64, 48, 64)
        >>> correlate(x1, x2, patch_size=9, memory_budget="64MiB").shape
        torch.Size([2, 9, 9, 48, 64])

        Volumes, as the 3-D pure-PyTorch ports compute them (input2 padded by
        the maximum displacement md = 2, kernel 1, mean over channels; the
        implicit zero padding replaces theirs, so ``padding`` stays 0):

        >>> v1, v2 = torch.randn(1, 16, 8, 12, 12), torch.randn(1, 16, 8, 12, 12)
        >>> correlate(v1, v2, patch_size=5, normalize="channels", flatten=True).shape
        torch.Size([1, 125, 8, 12, 12])

    Under ``torch.jit.trace``, ``torch.export`` and ONNX export this runs as
    ``docs/deployment.md`` describes (``plan`` is not supported there).
    """
    checks.check_bool("flatten", flatten)
    how = deploy.mode()
    if how != "eager":
        config = deploy_config((kernel_size, patch_size, stride, padding, dilation, dilation_patch), normalize,
                               memory_budget, plan=plan)
        return dispatch.run_volume(how, config, input1, input2, flatten)
    input1, input2 = prepare_inputs(input1, input2)
    g = make_geometry(input1.shape, input2.shape, kernel_size, patch_size, stride, padding, dilation, dilation_patch)
    scale = normalization_scale(normalize, g.channels, g.kernel_volume)
    out = cost_volume(input1, input2, g, scale, memory_budget, plan)
    if flatten:
        out = out.reshape(g.batch, g.num_displacements, *g.out_size)
    return out


def cost_volume(
    input1: torch.Tensor, input2: torch.Tensor, geometry: Geometry, scale: float, memory_budget: BudgetLike,
    plan: Plan | None = None,
) -> torch.Tensor:
    """The differentiable volume ``(B, *patch, *out_size)`` of validated inputs (for :func:`correlate` and the shims).

    Always the custom operator ``tiledcorr::correlate`` (:mod:`tiledcorr.library`),
    which plans at run time, or runs the tiling of a given ``plan``; plain eager
    tensors skip the dispatcher (:func:`~tiledcorr.library.registration.call`).
    """
    budget, tiling = operator_args(check_plan(plan, geometry, input1), memory_budget)
    with no_autocast(device_type_of(input1)):
        return call(correlate_op, input1, input2, geometry_args(geometry), float(scale), budget, tiling)


class SpatialCorrelation(Deployable, nn.Module):
    """Module twin of :func:`correlate`; see the function for the arguments.

    Shape:
        - input1, input2: ``(B, C, H, W)``
        - output: ``(B, PH, PW, oH, oW)``, or ``(B, PH*PW, oH, oW)`` with ``flatten=True``

    Example:
        >>> layer = SpatialCorrelation(patch_size=9, normalize="channels", flatten=True)
        >>> layer(torch.randn(1, 32, 19, 34), torch.randn(1, 32, 19, 34)).shape
        torch.Size([1, 81, 19, 34])
    """

    _ARGS = ("kernel_size", "patch_size", "stride", "padding", "dilation", "dilation_patch", "normalize", "flatten",
             "memory_budget")
    _DEFAULTS = dict(kernel_size=1, patch_size=1, stride=1, padding=0, dilation=1, dilation_patch=1, normalize=None,
                     flatten=False, memory_budget=None)

    def __init__(
        self, kernel_size: IntOrTuple = 1, patch_size: IntOrTuple = 1, stride: IntOrTuple = 1,
        padding: IntOrTuple = 0, dilation: IntOrTuple = 1, dilation_patch: IntOrTuple = 1, *,
        normalize: Normalize = None, flatten: bool = False, memory_budget: BudgetLike = None,
    ) -> None:
        super().__init__()
        self.kernel_size, self.patch_size, self.stride = kernel_size, patch_size, stride
        self.padding, self.dilation, self.dilation_patch = padding, dilation, dilation_patch
        self.normalize, self.flatten, self.memory_budget = normalize, flatten, memory_budget

    def forward(self, input1: torch.Tensor, input2: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_scripting():
            return deploy.correlate(input1, input2, self._script_params, self._script_normalize, self._script_budget,
                                    self._script_ndims, self.flatten)
        return self._call(input1, input2)

    @torch.jit.unused
    def _call(self, input1: torch.Tensor, input2: torch.Tensor) -> torch.Tensor:
        return correlate(
            input1, input2, self.kernel_size, self.patch_size, self.stride, self.padding, self.dilation,
            self.dilation_patch, normalize=self.normalize, flatten=self.flatten, memory_budget=self.memory_budget,
        )

    def deploy_config(self) -> DeployConfig:
        checks.check_bool("flatten", self.flatten)
        return deploy_config((self.kernel_size, self.patch_size, self.stride, self.padding, self.dilation,
                              self.dilation_patch), self.normalize, self.memory_budget)

    def extra_repr(self) -> str:
        return repr_args(self, self._ARGS, self._DEFAULTS)
