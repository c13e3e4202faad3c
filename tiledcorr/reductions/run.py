"""Running a fused reduction: its forward into a fresh sink, and its backward through its gradient source."""

from __future__ import annotations

from typing import Callable

import torch

from ..errors import ArgumentValueError
from ..execution import nonfinite
from ..execution.engine import run_forward
from ..execution.retry import with_oom_retry
from ..execution.tiles import iter_tiles
from ..execution.volume import backward_inputs, fused_or_per_tile
from ..planning import registry
from ..planning.planner import Plan
from ..planning.registry import Strategy
from .table import Reduction, ReductionSink


def _run_sink(input1: torch.Tensor, input2: torch.Tensor, plan: Plan, scale: float,
              make_sink: Callable[[bool], ReductionSink]) -> ReductionSink:
    """Run the plan into a fresh sink (fresh again on an out-of-memory retry) and return it.

    ``make_sink(nan_aware)`` builds the sink; ``nan_aware`` is set when the
    inputs hold NaN or Inf (the exact path), for sinks whose order depends on it.
    """
    g = plan.geometry
    finite = g.channels == 0 or nonfinite.all_finite(input1, input2)

    def attempt(p: Plan) -> ReductionSink:
        sink = make_sink(not finite)
        if g.no_tiles:
            return sink  # an empty result: no tile runs (and none may be built, whatever the parameters)
        if g.channels == 0:
            # Sums over no channels: the volume is 0 everywhere (the engine needs C > 0).
            for tile in iter_tiles(g, p.tiling):
                sink.consume(tile, input1.new_zeros((tile.batch, *tile.displacements, *tile.positions), dtype=sink.dtype))
        elif finite:
            run_forward(input1, input2, g, p.tiling, sink, scale=scale)
        else:  # zero padding is not exact for NaN and Inf
            nonfinite.run_forward(input1, input2, p, sink, scale=scale)
        return sink

    return with_oom_retry(plan, attempt)


def reduce_forward(reduction: Reduction, input1: torch.Tensor, input2: torch.Tensor, plan: Plan, scale: float,
                   k: int | None, temperature: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The reduction's three results (see :attr:`Reduction.finish`)."""
    g, dtype, device = plan.geometry, plan.compute_dtype, input1.device
    if registry.get(plan.strategy).runs_whole_plan:
        plan, fused = fused_or_per_tile(plan, g.channels == 0 or nonfinite.all_finite(input1, input2))
        if fused is not None:
            return with_oom_retry(plan, lambda p: fused.reduce_forward(reduction.name, input1, input2, g, scale, k,
                                                                      temperature))
    sink = _run_sink(input1, input2, plan, scale,
                     lambda nan_aware: reduction.make_sink(g, dtype, device, k, temperature, nan_aware))
    return reduction.finish(sink, input1.dtype)


def reduce_backward(
    reduction: Reduction, grad: torch.Tensor, input1: torch.Tensor, input2: torch.Tensor,
    results: tuple[torch.Tensor, torch.Tensor, torch.Tensor], plan: Plan, scale: float, k: int | None,
    temperature: float, need1: bool, need2: bool,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Both input gradients from the gradient of the reduction's first result (``None`` where not needed)."""
    if reduction.grad_source is None:  # autograd never asks: such a reduction's results are not differentiable
        raise ArgumentValueError(f"reduction {reduction.name!r} has no gradient")
    source, present = reduction.grad_source(plan.geometry, results, grad, temperature, plan.compute_dtype)

    def whole_plan(strategy: Strategy, grad1: torch.Tensor | None, grad2: torch.Tensor | None) -> None:
        strategy.reduce_backward(reduction.name, grad, input1, input2, results, grad1, grad2, plan.geometry, scale, k,
                                 temperature)

    return backward_inputs(input1, input2, source, plan, scale, need1, need2, upstream=grad, upstream_present=present,
                           whole_plan=whole_plan)
