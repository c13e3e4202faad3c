"""The stored cost volume's forward and backward: finite inputs through the engine, others through the exact path.

The backward walks the same tiles as the forward and never stores anything
per tile, so training memory is the inputs, the output and one tile's
workspace: what gradient checkpointing would give, without its bookkeeping.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from ..budget import format_bytes
from ..dtypes import compute_dtype
from ..errors import MemoryBudgetError
from ..planning import registry
from ..planning.planner import Plan, per_tile_plan
from ..planning.registry import Strategy
from . import hugepages, nonfinite
from .engine import one_tile_gradients, one_tile_volume, run_backward, run_forward
from .retry import is_out_of_memory, with_oom_retry
from .sinks import GradSource, OutputSink, volume_grad


def fused_or_per_tile(plan: Plan, finite: bool) -> tuple[Plan, Strategy | None]:
    """The plan to run and, for a strategy that runs whole plans, that strategy.

    Such a strategy (a fused kernel) takes finite inputs only; for others the
    exact NaN/Inf path runs a per-tile plan of the same budget instead.
    """
    strategy = registry.get(plan.strategy)
    if not strategy.runs_whole_plan:
        return plan, None
    if finite:
        return plan, strategy
    return per_tile_plan(plan), None


def forward_volume(input1: torch.Tensor, input2: torch.Tensor, plan: Plan, scale: float) -> torch.Tensor:
    """The cost volume ``(B, *patch, *out_size)`` in ``input1``'s dtype, no autograd.

    Zero padding is exact unless a NaN or Inf meets it, and then the product
    is NaN: so where the volume is smaller than the inputs (few displacements,
    many channels) the volume is checked after the fast path instead of the
    inputs before it, and recomputed by the exact path if it holds a NaN or
    Inf; so is the volume of a plan of one small tile, which runs as its
    strategy's program (:func:`~tiledcorr.execution.engine.one_tile_volume`).
    A whole-plan strategy (a fused kernel) needs the answer first.
    """
    g = plan.geometry
    if g.is_empty:
        return input1.new_zeros(g.out_shape)
    out = one_tile_volume(input1, input2, g, plan.tiling, scale)  # a plan of one small tile: its program
    if out is None and _checked_after(plan, input1, input2):
        out = _forward_per_tile(input1, input2, plan, scale, finite=True)
    if out is not None:  # the fast path ran first: its volume is checked
        if nonfinite.all_finite(out):
            return out
        return _forward_per_tile(input1, input2, plan, scale, finite=False, out=out)
    finite = nonfinite.all_finite(input1, input2)
    plan, fused = fused_or_per_tile(plan, finite)
    if fused is None:
        return _forward_per_tile(input1, input2, plan, scale, finite=finite)
    out = allocate_output(input1, plan)

    def attempt(p: Plan) -> torch.Tensor:
        fused.volume_forward(input1, input2, out, g, scale)
        return out

    return with_oom_retry(plan, attempt)


def _checked_after(plan: Plan, input1: torch.Tensor, input2: torch.Tensor) -> bool:
    """Whether the volume is checked for NaN and Inf after the fast path: a per-tile plan, smaller than the inputs."""
    return not registry.get(plan.strategy).runs_whole_plan and math.prod(plan.geometry.out_shape) < input1.numel() + input2.numel()


def _forward_per_tile(input1: torch.Tensor, input2: torch.Tensor, plan: Plan, scale: float, *, finite: bool,
                      out: torch.Tensor | None = None) -> torch.Tensor:
    """The volume by a per-tile plan: the fast path, or the exact one for NaN and Inf (into ``out`` if given)."""
    g = plan.geometry
    target = allocate_output(input1, plan) if out is None else out

    def attempt(p: Plan) -> torch.Tensor:
        # Every attempt writes every element of ``out`` (the tiles cover the volume once), so it is reused.
        if finite:
            run_forward(input1, input2, g, p.tiling, OutputSink(g, target), scale=scale)
        else:  # zero padding is not exact for NaN and Inf
            nonfinite.run_forward(input1, input2, p, OutputSink(g, target), scale=scale)
        return target

    return with_oom_retry(plan, attempt)


def allocate_output(input1: torch.Tensor, plan: Plan) -> torch.Tensor:
    """The uninitialised cost volume (huge pages advised); an allocation that fails is the output's fault, not the workspace's.

    Raises:
        MemoryBudgetError: the output itself cannot be allocated.
    """
    try:
        out = input1.new_empty(plan.geometry.out_shape)
    except (RuntimeError, MemoryError) as exc:
        if not is_out_of_memory(exc):
            raise
        raise MemoryBudgetError(
            f"out of memory allocating the output {tuple(plan.geometry.out_shape)} "
            f"({format_bytes(plan.output_bytes)}) on {input1.device}; reduce the batch, the patch size or the "
            "image size, or use tiledcorr.correlate_reduce() to avoid storing the volume"
        ) from exc
    hugepages.advise(out)
    return out


def backward_inputs(
    input1: torch.Tensor, input2: torch.Tensor, grad_source: GradSource | torch.Tensor, plan: Plan, scale: float,
    need1: bool, need2: bool, *, upstream: torch.Tensor | None = None,
    upstream_present: Callable[[str], bool] | None = None,
    whole_plan: Callable[[Strategy, torch.Tensor | None, torch.Tensor | None], None] | None = None,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Gradients of both inputs (``None`` where not needed), in the inputs' dtype.

    ``grad_source`` gives each tile's band gradient: the stored volume's
    gradient ``(B, *patch, *out_size)`` as a tensor, or a fused reduction's
    own :class:`~tiledcorr.execution.sinks.GradSource` (:mod:`tiledcorr.reductions`), which
    must pass the gradient it was given as ``upstream`` and may say which value
    classes its band gradients can hold (``upstream_present``, see
    :func:`tiledcorr.execution.nonfinite.run_backward`). Where the inputs or that
    gradient hold NaN or Inf, every entry gets its in-image IEEE value
    (:mod:`tiledcorr.execution.nonfinite`). ``whole_plan(strategy, grad1,
    grad2)`` adds the gradients for a strategy that runs whole plans (the
    stored volume's: its ``volume_backward``).
    """
    g = plan.geometry
    if isinstance(grad_source, torch.Tensor) and not g.is_empty:
        # A plan of one small tile (every tiny call): new gradients, checked after (a NaN or Inf among the
        # values the products read makes one of them NaN or Inf), then the general path if they are not finite.
        grads = one_tile_gradients(input1, input2, grad_source, g, plan.tiling, need1, need2, scale)
        if grads is not None and nonfinite.all_finite(*(t for t in grads if t is not None)):
            return grads
    acc_dtype = compute_dtype(input1.dtype)
    present = upstream_present
    if isinstance(grad_source, torch.Tensor):
        upstream = grad_source
        grad_source = volume_grad(upstream)
        present = nonfinite.Indicators(upstream).present
        if whole_plan is None:
            def whole_plan(strategy: Strategy, grad1: torch.Tensor | None, grad2: torch.Tensor | None) -> None:
                strategy.volume_backward(upstream, input1, input2, grad1, grad2, g, scale)
    elif upstream is None:
        raise TypeError("backward_inputs: a gradient source needs the gradient it was made from (upstream=)")
    ieee = not g.is_empty and not nonfinite.all_finite(input1, input2, upstream)
    plan, fused = fused_or_per_tile(plan, not ieee)

    def attempt(p: Plan):
        grad1 = torch.zeros(input1.shape, dtype=acc_dtype, device=input1.device) if need1 else None
        grad2 = torch.zeros(input2.shape, dtype=acc_dtype, device=input2.device) if need2 else None
        if fused is not None and not g.is_empty:
            if whole_plan is None:
                raise TypeError("backward_inputs: a gradient source run by a whole-plan strategy needs whole_plan=")
            whole_plan(fused, grad1, grad2)
        elif ieee:  # zero padding is not exact for NaN and Inf
            nonfinite.run_backward(input1, input2, p, grad1, grad2, grad_source, scale=scale, upstream_present=present)
        elif not g.is_empty:
            run_backward(input1, input2, g, p.tiling, grad1, grad2, grad_source, scale=scale)
        return grad1, grad2

    grad1, grad2 = with_oom_retry(plan, attempt)
    cast = lambda t: None if t is None else t.to(input1.dtype)  # noqa: E731
    return cast(grad1), cast(grad2)
