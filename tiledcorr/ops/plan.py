"""Planning from shapes alone, as users call it: :func:`plan`."""

from __future__ import annotations

from typing import Any, Sequence

import torch

from .. import checks, reductions
from ..errors import ArgumentValueError
from ..geometry import Geometry
from ..planning.costs import SinkCost
from ..planning.planner import Plan, make_geometry, plan_geometry
from .correlate_reduce import check_k


def plan(
    input1_shape: Sequence[int],
    input2_shape: Sequence[int] | None = None,
    *,
    kernel_size=1, patch_size=1, stride=1, padding=0, dilation=1, dilation_patch=1,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    memory_budget: Any = None,
    requires_grad: bool = False,
    strategy: str | None = None,
    reduction: str | None = None,
    k: int | None = None,
) -> Plan:
    """Plan a correlation from shapes alone.

    Args:
        input1_shape: ``(B, C, H, W)`` (or ``(B, C, D, H, W)`` for volumes).
        input2_shape: must equal ``input1_shape``; ``None`` means the same.
        kernel_size, patch_size, stride, padding, dilation, dilation_patch: as
            in :func:`tiledcorr.correlate`.
        dtype: input dtype (half types are computed in float32).
        device: where it will run; a ``None`` or fractional budget is taken
            from that device's free memory.
        memory_budget: workspace budget, any form :func:`tiledcorr.resolve_budget`
            accepts. The output itself is not counted (``Plan.output_bytes``).
        requires_grad: plan so that the backward fits the budget too.
        strategy: force one strategy of the registry (:func:`tiledcorr.planning.registry.names`).
        reduction: plan the fused reduction :func:`tiledcorr.correlate_reduce`
            runs (``"max"``, ``"argmax"``, ``"softargmax"`` or ``"topk"``), its
            per-tile temporaries counted against the budget: the plan it makes
            itself for that budget. ``None``: the cost volume of :func:`tiledcorr.correlate`.
        k: the number of values ``"topk"`` keeps.

    Returns:
        The fastest :class:`Plan` that fits (see the module docstring).

    Raises:
        MemoryBudgetError: not even the smallest tile fits; the message states
            the smallest budget that works.
        ArgumentValueError: an unknown ``reduction``, a ``k`` it does not take,
            or ``requires_grad=True`` with ``"argmax"`` (which has no gradient).
    """
    geometry = make_geometry(input1_shape, input2_shape, kernel_size, patch_size, stride, padding, dilation, dilation_patch)
    sink_cost = None
    if reduction is not None or k is not None:
        sink_cost = _reduction_cost(reduction, k, geometry, checks.check_dtype("dtype", dtype), requires_grad)
    return plan_geometry(geometry, dtype=dtype, device=device, memory_budget=memory_budget, requires_grad=requires_grad,
                         strategy=strategy, sink_cost=sink_cost)



def _reduction_cost(reduction: Any, k: Any, geometry: Geometry, dtype: torch.dtype, requires_grad: Any) -> SinkCost:
    """What ``plan(reduction=..., k=...)`` counts, validated as :func:`tiledcorr.correlate_reduce` does."""
    if reduction is None:
        raise ArgumentValueError(f"k is only used with reduction='topk', got k={checks.show(k)} and no reduction")
    spec = reductions.get(reduction)
    k = check_k(k, spec, geometry.num_displacements)
    if not spec.differentiable and checks.check_bool("requires_grad", requires_grad):
        raise ArgumentValueError(
            f"requires_grad=True with reduction={spec.name!r}: {spec.name} has no gradient (its results are integer "
            "displacements), so correlate_reduce plans its forward only; plan with requires_grad=False (without --backward "
            "on the command line)"
        )
    return reductions.sink_cost(spec.name, k, geometry.ndim, dtype)
