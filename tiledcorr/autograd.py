"""The autograd Function: saves only the two inputs, recomputes tile by tile.

The backward walks the same tiles as the forward and never stores anything
per tile, so training memory is the inputs, the output and one tile's
workspace: what gradient checkpointing would give, without its bookkeeping.
"""

from __future__ import annotations

import warnings
from typing import Any, Callable, TypeVar

import torch
from torch.autograd.function import once_differentiable

from .engine import OutputSink, compute_dtype, run_backward, run_forward, volume_grad
from .errors import MemoryBudgetError
from .planner import Plan, smaller_plan

T = TypeVar("T")

_warned_retry = False


def with_oom_retry(plan: Plan, run: Callable[[Plan], T]) -> T:
    """Run ``run(plan)``; on an out-of-memory error, halve the workspace and run again.

    ``run`` must start from scratch each time (fresh sinks and accumulators),
    so a retry never leaves part of an earlier attempt in the result.

    Raises:
        MemoryBudgetError: memory ran out even with the smallest plan.
    """
    global _warned_retry
    current = plan
    while True:
        try:
            return run(current)
        except torch.OutOfMemoryError as exc:
            if current.device_type == "cuda":
                torch.cuda.empty_cache()
            smaller = smaller_plan(current)
            if smaller is None or smaller.peak_workspace_bytes >= current.peak_workspace_bytes:
                raise MemoryBudgetError(
                    "out of memory even with the smallest tiling "
                    f"({current.peak_workspace_bytes} bytes of workspace); free memory on the "
                    "device or reduce the problem size"
                ) from exc
            if not _warned_retry:
                warnings.warn(
                    f"tiledcorr: out of memory with {current.peak_workspace_bytes} bytes of "
                    f"workspace; retrying with {smaller.peak_workspace_bytes} bytes (warned once)",
                    RuntimeWarning,
                    stacklevel=3,
                )
                _warned_retry = True
            current = smaller


def forward_volume(input1: torch.Tensor, input2: torch.Tensor, plan: Plan, scale: float) -> torch.Tensor:
    """The cost volume ``(B, *patch, *out_size)`` in ``input1``'s dtype, no autograd."""
    g = plan.geometry
    if g.is_empty:
        return input1.new_zeros(g.out_shape)

    def attempt(p: Plan) -> torch.Tensor:
        out = input1.new_empty(g.out_shape)
        run_forward(input1, input2, g, p.tiling, OutputSink(g, out), scale=scale)
        return out

    return with_oom_retry(plan, attempt)


def backward_inputs(
    input1: torch.Tensor, input2: torch.Tensor, grad_out: torch.Tensor, plan: Plan, scale: float,
    need1: bool, need2: bool,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Gradients of both inputs (``None`` where not needed), in the inputs' dtype."""
    g = plan.geometry
    acc_dtype = compute_dtype(input1.dtype)

    def attempt(p: Plan):
        grad1 = torch.zeros(input1.shape, dtype=acc_dtype, device=input1.device) if need1 else None
        grad2 = torch.zeros(input2.shape, dtype=acc_dtype, device=input2.device) if need2 else None
        if not g.is_empty:
            run_backward(input1, input2, g, p.tiling, grad1, grad2, volume_grad(grad_out), scale=scale)
        return grad1, grad2

    grad1, grad2 = with_oom_retry(plan, attempt)
    cast = lambda t: None if t is None else t.to(input1.dtype)  # noqa: E731
    return cast(grad1), cast(grad2)


class CorrelationFunction(torch.autograd.Function):
    """``(input1, input2, plan, scale) -> volume``; differentiable once in both inputs."""

    @staticmethod
    def forward(input1: torch.Tensor, input2: torch.Tensor, plan: Plan, scale: float) -> torch.Tensor:
        return forward_volume(input1, input2, plan, scale)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: torch.Tensor) -> None:
        input1, input2, plan, scale = inputs
        ctx.save_for_backward(input1, input2)
        ctx.plan, ctx.scale = plan, scale

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_out: torch.Tensor):
        input1, input2 = ctx.saved_tensors
        need1, need2 = ctx.needs_input_grad[:2]
        grad1, grad2 = backward_inputs(input1, input2, grad_out, ctx.plan, ctx.scale, need1, need2)
        return grad1, grad2, None, None
