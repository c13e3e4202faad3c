"""``tiledcorr::correlate_reduce`` and its backward: the fused reductions' only way into the engine.

The arguments are those of ``tiledcorr::correlate`` (:mod:`tiledcorr.library.common`)
plus the reduction's name (a key of :data:`tiledcorr.reductions.REDUCTIONS`),
``k`` (0 for none) and the temperature. The three results are the
reduction's :attr:`~tiledcorr.reductions.Reduction.finish` tensors: the
selected values ``(B, k, *out_size)`` (input dtype), their int64 flat
indices and an unused empty tensor; or the soft-argmax ``E`` ``(B, N, *out_size)``
and its softmax statistics ``m``, ``z`` ``(B, *out_size)`` for the backward.
"""

from __future__ import annotations

from typing import Sequence

import torch

from ..geometry import Geometry
from ..planning.planner import Plan
from ..reductions import table
from ..reductions.run import reduce_backward, reduce_forward
from .common import geometry_of, input_grads_fake, input_grads_or_empty, plan_at_run_time
from .registration import define, register_backward


def _plan(input1: torch.Tensor, geometry: Geometry, budget: str, tiling: str, reduction: str, k: int,
          backward: bool) -> Plan:
    return plan_at_run_time(input1, geometry, budget, tiling, backward,
                            table.sink_cost(reduction, k or None, geometry.ndim, input1.dtype))


def _correlate_reduce(
    input1: torch.Tensor, input2: torch.Tensor, geometry: Sequence[int], scale: float, budget: str, tiling: str,
    reduction: str, k: int, temperature: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A fused reduction's three results (see the module docstring)."""
    g = geometry_of(input1.shape, geometry)
    plan = _plan(input1, g, budget, tiling, reduction, k, backward=False)
    return reduce_forward(table.get(reduction), input1, input2, plan, scale, k or None, temperature)


def _correlate_reduce_fake(input1, input2, geometry, scale, budget, tiling, reduction, k, temperature):
    return table.get(reduction).fake(geometry_of(input1.shape, geometry), input1, k)


def _correlate_reduce_backward(
    grad: torch.Tensor, input1: torch.Tensor, input2: torch.Tensor, result: torch.Tensor, index_or_max: torch.Tensor,
    normaliser: torch.Tensor, geometry: Sequence[int], scale: float, budget: str, tiling: str, reduction: str, k: int,
    temperature: float, need1: bool, need2: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Both input gradients from the gradient of the first result (empty: not needed).

    ``result, index_or_max, normaliser`` are the forward operator's three results.
    """
    g = geometry_of(input1.shape, geometry)
    plan = _plan(input1, g, budget, tiling, reduction, k, backward=True)
    grads = reduce_backward(table.get(reduction), grad, input1, input2, (result, index_or_max, normaliser), plan, scale,
                            k or None, temperature, need1, need2)
    return input_grads_or_empty(input1, input2, *grads)


def _correlate_reduce_backward_fake(grad, input1, input2, result, index_or_max, normaliser, geometry, scale, budget,
                                    tiling, reduction, k, temperature, need1, need2):
    return input_grads_fake(input1, input2, need1, need2)


correlate_reduce_op = define(
    "correlate_reduce(Tensor input1, Tensor input2, SymInt[] geometry, float scale, str budget, str tiling, "
    "str reduction, SymInt k, float temperature) -> (Tensor, Tensor, Tensor)", _correlate_reduce, _correlate_reduce_fake)
correlate_reduce_backward_op = define(
    "correlate_reduce_backward(Tensor grad, Tensor input1, Tensor input2, Tensor result, Tensor index_or_max, "
    "Tensor normaliser, SymInt[] geometry, float scale, str budget, str tiling, str reduction, SymInt k, "
    "float temperature, bool need1, bool need2) -> (Tensor, Tensor)",
    _correlate_reduce_backward, _correlate_reduce_backward_fake)
register_backward(correlate_reduce_op, correlate_reduce_backward_op, save_results=True)
