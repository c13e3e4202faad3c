"""What the public entry points share: input preparation, normalisation, plans given by the user, reprs."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from .. import checks
from ..errors import ArgumentTypeError, ArgumentValueError
from ..geometry import Geometry
from ..planning.planner import Plan
from ..typing import Normalize

NORMALIZATIONS = (None, "channels", "kernel_channels", "sqrt_channels")


def normalization_scale(normalize: Normalize, channels: int, kernel_volume: int) -> float:
    """The factor each sum is multiplied by for a ``normalize`` option.

    ``None``: 1 (a plain sum, as ``spatial_correlation_sampler``);
    ``"channels"``: 1/C (the mean over channels, as the pure-PyTorch ports);
    ``"kernel_channels"``: 1/(k*k*C) (FlowNet2); ``"sqrt_channels"``: 1/sqrt(C)
    (RAFT, GMFlow). With C = 0 the sums are empty and the factor is 1.
    """
    if normalize not in NORMALIZATIONS:
        raise ArgumentValueError(f"normalize must be one of {NORMALIZATIONS}, got {checks.show(normalize)}")
    if normalize is None or channels == 0:
        return 1.0
    return {
        "channels": 1.0 / channels,
        "kernel_channels": 1.0 / (channels * kernel_volume),
        "sqrt_channels": 1.0 / math.sqrt(channels),
    }[normalize]


def prepare_inputs(input1: Any, input2: Any, *, spatial_dims=(2, 3)) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate the two inputs and apply autocast (correlation runs in autocast's dtype, as matmul).

    As for matmul, float64 inputs are left in float64 inside an autocast region.
    """
    checks.check_inputs(input1, input2, spatial_dims=spatial_dims)
    device_type = input1.device.type
    if torch.is_autocast_enabled(device_type) and input1.dtype != torch.float64:
        low = torch.get_autocast_dtype(device_type)
        input1, input2 = input1.to(low), input2.to(low)
    return input1, input2


def check_plan(plan: Any, geometry: Geometry, input1: torch.Tensor) -> Plan | None:
    """A user's ``plan`` argument: ``None``, or a :class:`Plan` made for these shapes, dtype and device.

    Its tiling is checked field by field when an operator runs it.
    """
    if plan is None:
        return None
    if not isinstance(plan, Plan):
        raise ArgumentTypeError(f"plan must be a tiledcorr.Plan from tiledcorr.plan(), got {type(plan).__name__}")
    plan.check_fits(geometry, input1.dtype, input1.device)
    return plan


def repr_args(module: nn.Module, names: tuple[str, ...], defaults: dict[str, Any]) -> str:
    """``name=value`` for each argument that differs from its default (kornia style)."""
    parts = [f"{n}={getattr(module, n)!r}" for n in names if getattr(module, n) != defaults.get(n, object())]
    return ", ".join(parts)
