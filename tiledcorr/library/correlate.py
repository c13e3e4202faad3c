"""``tiledcorr::correlate`` and its backward: the only way into the engine for the stored cost volume.

The arguments are described in :mod:`tiledcorr.library.common`. Fake (meta)
kernels give the output shapes from the input shapes, so ``torch.compile``
and ``torch.export`` keep the operator in their graphs.
"""

from __future__ import annotations

from typing import Sequence

import torch

from ..execution.volume import backward_inputs, forward_volume
from ..planning.planner import check_output_fits
from .common import geometry_of, input_grads_fake, input_grads_or_empty, plan_at_run_time
from .registration import define, register_backward


def _correlate(input1: torch.Tensor, input2: torch.Tensor, geometry: Sequence[int], scale: float, budget: str,
               tiling: str) -> torch.Tensor:
    """The cost volume ``(B, *patch, *out_size)`` in input1's dtype."""
    g = geometry_of(input1.shape, geometry)
    plan = plan_at_run_time(input1, g, budget, tiling, requires_grad=False)
    check_output_fits(plan, input1.device)
    return forward_volume(input1, input2, plan, scale)


def _correlate_fake(input1, input2, geometry, scale, budget, tiling):
    return input1.new_empty(geometry_of(input1.shape, geometry).out_shape)


def _correlate_backward(grad: torch.Tensor, input1: torch.Tensor, input2: torch.Tensor, geometry: Sequence[int],
                        scale: float, budget: str, tiling: str, need1: bool, need2: bool,
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Both input gradients; an empty tensor stands for one that is not needed."""
    g = geometry_of(input1.shape, geometry)
    plan = plan_at_run_time(input1, g, budget, tiling, requires_grad=True)
    return input_grads_or_empty(input1, input2, *backward_inputs(input1, input2, grad, plan, scale, need1, need2))


def _correlate_backward_fake(grad, input1, input2, geometry, scale, budget, tiling, need1, need2):
    return input_grads_fake(input1, input2, need1, need2)


correlate_op = define(
    "correlate(Tensor input1, Tensor input2, SymInt[] geometry, float scale, str budget, str tiling) -> Tensor",
    _correlate, _correlate_fake)
correlate_backward_op = define(
    "correlate_backward(Tensor grad, Tensor input1, Tensor input2, SymInt[] geometry, float scale, str budget, "
    "str tiling, bool need1, bool need2) -> (Tensor, Tensor)", _correlate_backward, _correlate_backward_fake)
register_backward(correlate_op, correlate_backward_op)
