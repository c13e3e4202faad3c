"""Fused reductions over displacements: :func:`correlate_reduce` and its Module twin :class:`CorrelationReduce`.

See :mod:`tiledcorr.reductions` for how the volume is reduced without being stored.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any, Literal, Union, overload

import torch
from torch import nn

from .. import checks, reductions
from ..errors import ArgumentValueError
from ..library import deploy, dispatch
from ..library.common import geometry_args, operator_args
from ..library.deploy import DeployConfig
from ..library.reduce import correlate_reduce_op
from ..library.registration import call
from ..planning.planner import Plan, make_geometry
from ..reductions import Reduction, TopK
from ..typing import BudgetLike, IntOrTuple, Normalize, TensorReductionName
from .common import (Deployable, check_plan, deploy_config, device_type_of, no_autocast, normalization_scale, prepare_inputs,
                     repr_args)


def check_k(k: Any, spec: Reduction, num_displacements: int) -> int | None:
    """``k`` for a reduction: ``None`` unless it keeps ``k`` values, then ``1 <= k <= num_displacements``."""
    if not spec.takes_k:
        if k is not None:
            raise ArgumentValueError(
                f"k is only used by reduction='topk', got k={checks.show(k)} with reduction={checks.show(spec.name)}")
        return None
    if k is None:
        raise ArgumentValueError("reduction='topk' needs k, the number of values to keep per position")
    k = checks.check_int("k", k, minimum=1)
    if k > num_displacements:
        raise ArgumentValueError(f"k must be <= the number of displacements ({num_displacements}), got k={k}")
    return k


def check_temperature(temperature: Any) -> float:
    """A softmax temperature: finite and > 0."""
    temperature = checks.check_real("temperature", temperature)
    if temperature <= 0:
        raise ArgumentValueError(f"temperature must be > 0, got {checks.show(temperature)}")
    return temperature


# Overloads for type checkers: reduction="topk" gives a TopK, the other names a tensor, and a
# plain str (e.g. from a config file) either.
@overload
def correlate_reduce(
    input1: torch.Tensor, input2: torch.Tensor, kernel_size: IntOrTuple = ..., patch_size: IntOrTuple = ...,
    stride: IntOrTuple = ..., padding: IntOrTuple = ..., dilation: IntOrTuple = ..., dilation_patch: IntOrTuple = ...,
    *, reduction: Literal["topk"], k: int | None = ..., temperature: float = ..., normalize: Normalize = ...,
    memory_budget: BudgetLike = ..., plan: Plan | None = ...,
) -> TopK: ...
@overload
def correlate_reduce(
    input1: torch.Tensor, input2: torch.Tensor, kernel_size: IntOrTuple = ..., patch_size: IntOrTuple = ...,
    stride: IntOrTuple = ..., padding: IntOrTuple = ..., dilation: IntOrTuple = ..., dilation_patch: IntOrTuple = ...,
    *, reduction: TensorReductionName, k: int | None = ..., temperature: float = ..., normalize: Normalize = ...,
    memory_budget: BudgetLike = ..., plan: Plan | None = ...,
) -> torch.Tensor: ...
@overload
def correlate_reduce(
    input1: torch.Tensor, input2: torch.Tensor, kernel_size: IntOrTuple = ..., patch_size: IntOrTuple = ...,
    stride: IntOrTuple = ..., padding: IntOrTuple = ..., dilation: IntOrTuple = ..., dilation_patch: IntOrTuple = ...,
    *, reduction: str, k: int | None = ..., temperature: float = ..., normalize: Normalize = ...,
    memory_budget: BudgetLike = ..., plan: Plan | None = ...,
) -> torch.Tensor | TopK: ...


def correlate_reduce(
    input1: torch.Tensor,
    input2: torch.Tensor,
    kernel_size: IntOrTuple = 1,
    patch_size: IntOrTuple = 1,
    stride: IntOrTuple = 1,
    padding: IntOrTuple = 0,
    dilation: IntOrTuple = 1,
    dilation_patch: IntOrTuple = 1,
    *,
    reduction: str,
    k: int | None = None,
    temperature: float = 1.0,
    normalize: Normalize = None,
    memory_budget: BudgetLike = None,
    plan: Plan | None = None,
) -> torch.Tensor | TopK:
    """A reduction over the displacements of :func:`tiledcorr.correlate`, without storing the volume.

    Equals the same reduction of ``v = correlate(...).flatten(1, N)``
    (``(B, prod(patch), *out_size)``, ``N`` spatial dimensions) wherever that
    fits in memory, but holds one tile of ``v`` at a time. ``d(j)`` below is
    the displacement in pixels of flat index ``j``: per dimension
    ``(j_d - (P_d - 1)//2) * dilation_patch_d``, components ``(dy, dx)``
    (``(dz, dy, dx)`` for volumes). Ties go to the lowest index ``j``.

    * ``"max"``: ``v.amax(1)``, shape ``(B, *out_size)``; differentiable (the
      gradient goes to the argmax, as ``v.max(1).values``).
    * ``"argmax"``: ``d(v.argmax(1))``, shape ``(B, N, *out_size)``, int64.
    * ``"softargmax"``: ``sum_j softmax(v / temperature, 1)[:, j] * d(j)``,
      shape ``(B, N, *out_size)``, input dtype, differentiable. Combined across
      tiles with a running max and normaliser (online softmax): never overflows.
    * ``"topk"``: :class:`TopK` ``(values (B, k, *out_size), displacements
      (B, k, N, *out_size) int64)``, values descending as ``v.topk(k, 1)``
      (ties to the lower index); the values are differentiable.

    Args:
        input1: tensor of shape ``(B, C, H, W)`` (or ``(B, C, D, H, W)``).
        input2: tensor of the same shape, dtype and device.
        kernel_size, patch_size, stride, padding, dilation, dilation_patch:
            as in :func:`tiledcorr.correlate`.
        reduction: one of :data:`tiledcorr.reductions.REDUCTIONS`: ``"max"``,
            ``"argmax"``, ``"softargmax"`` or ``"topk"``.
        k: number of values per position for ``"topk"`` (``1 <= k <= prod(patch)``);
            must be ``None`` otherwise.
        temperature: softmax temperature of ``"softargmax"`` (finite, > 0).
        normalize: scaling of the sums, as in :func:`tiledcorr.correlate`
            (before the temperature).
        memory_budget: bound on the temporaries: the engine's workspace plus the
            reduction's per-tile temporaries (the inputs and the results, of size
            ``(B, *out_size)`` per statistic, are not counted). Same forms as
            :func:`tiledcorr.correlate`.
        plan: a ready :class:`tiledcorr.Plan` for these shapes (overrides
            ``memory_budget``); its tiling is used as is. A plan from
            ``tiledcorr.plan(..., reduction=reduction, k=k)`` is the one this
            call makes for that budget; a plan made without ``reduction``, or
            for another reduction or ``k``, did not count this reduction's
            temporaries, so its budget does not cover them.

    Returns:
        A tensor (``"max"``, ``"argmax"``, ``"softargmax"``) or a :class:`TopK`.

    Raises:
        ShapeError, ArgumentTypeError, ArgumentValueError, DeviceError: bad input,
            an unknown ``reduction``, ``k`` out of range, a ``temperature`` <= 0.
        MemoryBudgetError: no tiling fits ``memory_budget``.

    Example:
        >>> x1, x2 = torch.randn(1, 32, 40, 40), torch.randn(1, 32, 40, 40)
        >>> correlate_reduce(x1, x2, patch_size=21, reduction="argmax").shape
        torch.Size([1, 2, 40, 40])
        >>> correlate_reduce(x1, x2, patch_size=21, reduction="topk", k=4).displacements.shape
        torch.Size([1, 4, 2, 40, 40])
    """
    spec = reductions.get(reduction)
    temperature = check_temperature(temperature)
    how = deploy.mode()
    if how != "eager":  # torch.jit.trace, torch.export, ONNX export (docs/deployment.md)
        config, k = reduce_config((kernel_size, patch_size, stride, padding, dilation, dilation_patch), spec, k, normalize,
                                  memory_budget, input1.dim() - 2 if isinstance(input1, torch.Tensor) else 2, plan)
        result, found = dispatch.run_reduction(how, config, input1, input2, spec.name, k, temperature)
        return TopK(result, found) if spec.takes_k else result
    input1, input2 = prepare_inputs(input1, input2)
    geometry = make_geometry(input1.shape, input2.shape, kernel_size, patch_size, stride, padding, dilation, dilation_patch)
    k = check_k(k, spec, geometry.num_displacements)
    scale = normalization_scale(normalize, geometry.channels, geometry.kernel_volume)
    budget, tiling = operator_args(check_plan(plan, geometry, input1), memory_budget)
    # A reduction without a gradient (argmax) plans and runs its forward only.
    grad_mode = contextlib.nullcontext() if spec.differentiable else torch.no_grad()
    with grad_mode, no_autocast(device_type_of(input1)):
        results = call(correlate_reduce_op, input1, input2, geometry_args(geometry), float(scale), budget, tiling,
                       spec.name, k or 0, float(temperature))
    return spec.result(geometry, results)


def reduce_config(params: tuple[Any, ...], spec: Reduction, k: Any, normalize: Normalize, memory_budget: BudgetLike,
                  ndim: int, plan: Any = None) -> tuple[DeployConfig, int]:
    """``(config, k)`` of a fused reduction for scripted, traced and exported code (``k`` 0 for none), validated."""
    config = deploy_config(params, normalize, memory_budget, plan=plan)
    patch = config.params[1] * (ndim if len(config.params[1]) == 1 else 1)
    return config, check_k(k, spec, math.prod(patch)) or 0


class CorrelationReduce(Deployable, nn.Module):
    """Module twin of :func:`correlate_reduce`; see the function for the arguments.

    Shape:
        - input1, input2: ``(B, C, H, W)`` (or ``(B, C, D, H, W)``)
        - output: ``"max"``: ``(B, *out)``; ``"argmax"``, ``"softargmax"``:
          ``(B, N, *out)``; ``"topk"``: :class:`TopK` of ``(B, k, *out)`` and
          ``(B, k, N, *out)``

    Example:
        >>> layer = CorrelationReduce(patch_size=9, reduction="softargmax", temperature=0.1, normalize="channels")
        >>> layer(torch.randn(1, 32, 19, 34), torch.randn(1, 32, 19, 34)).shape
        torch.Size([1, 2, 19, 34])
    """

    _ARGS = (
        "kernel_size", "patch_size", "stride", "padding", "dilation", "dilation_patch", "reduction", "k",
        "temperature", "normalize", "memory_budget",
    )
    _DEFAULTS = dict(
        kernel_size=1, patch_size=1, stride=1, padding=0, dilation=1, dilation_patch=1, k=None, temperature=1.0,
        normalize=None, memory_budget=None,
    )

    def __init__(
        self, kernel_size: IntOrTuple = 1, patch_size: IntOrTuple = 1, stride: IntOrTuple = 1,
        padding: IntOrTuple = 0, dilation: IntOrTuple = 1, dilation_patch: IntOrTuple = 1, *,
        reduction: str, k: int | None = None, temperature: float = 1.0, normalize: Normalize = None,
        memory_budget: BudgetLike = None,
    ) -> None:
        super().__init__()
        self.kernel_size, self.patch_size, self.stride = kernel_size, patch_size, stride
        self.padding, self.dilation, self.dilation_patch = padding, dilation, dilation_patch
        self.reduction, self.k, self.temperature = reductions.get(reduction).name, k, check_temperature(temperature)
        self.normalize, self.memory_budget = normalize, memory_budget

    def forward(self, input1: torch.Tensor, input2: torch.Tensor) -> Union[torch.Tensor, TopK]:
        if torch.jit.is_scripting():
            result, found = deploy.correlate_reduce(
                input1, input2, self._script_params, self._script_normalize, self._script_budget, self._script_ndims,
                self.reduction, self._script_k, self.temperature)
            if self.reduction == "topk":
                return TopK(result, found)
            return result
        return self._call(input1, input2)

    @torch.jit.unused
    def _call(self, input1: torch.Tensor, input2: torch.Tensor) -> Union[torch.Tensor, TopK]:
        return correlate_reduce(
            input1, input2, self.kernel_size, self.patch_size, self.stride, self.padding, self.dilation,
            self.dilation_patch, reduction=self.reduction, k=self.k, temperature=self.temperature,
            normalize=self.normalize, memory_budget=self.memory_budget,
        )

    def deploy_config(self) -> DeployConfig:
        spec = reductions.get(self.reduction)
        check_temperature(self.temperature)
        # The patch's number of displacements bounds k: with an int patch_size it depends on the input's
        # dimensions, so k is checked against the smaller (2-D) count here and again when the Module runs eagerly.
        config, self._script_k = reduce_config((self.kernel_size, self.patch_size, self.stride, self.padding,
                                                self.dilation, self.dilation_patch), spec, self.k, self.normalize,
                                               self.memory_budget, 2)
        return config

    def extra_repr(self) -> str:
        return repr_args(self, self._ARGS, self._DEFAULTS)
