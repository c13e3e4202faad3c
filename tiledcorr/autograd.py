"""The autograd Function: saves only the two inputs, recomputes tile by tile.

The backward walks the same tiles as the forward and never stores anything
per tile, so training memory is the inputs, the output and one tile's
workspace: what gradient checkpointing would give, without its bookkeeping.
"""

from __future__ import annotations

import warnings
from typing import Any, Callable, TypeVar

import torch

from . import hugepages, nonfinite
from .engine import GradSource, OutputSink, compute_dtype, run_backward, run_forward, volume_grad
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
    finite = nonfinite.all_finite(input1, input2)

    def attempt(p: Plan) -> torch.Tensor:
        out = input1.new_empty(g.out_shape)
        hugepages.advise(out)
        if finite:
            run_forward(input1, input2, g, p.tiling, OutputSink(g, out), scale=scale)
        else:  # zero padding is not exact for NaN and Inf
            nonfinite.run_forward(input1, input2, p, OutputSink(g, out), scale=scale)
        return out

    return with_oom_retry(plan, attempt)


def backward_inputs(
    input1: torch.Tensor, input2: torch.Tensor, grad_source: GradSource | torch.Tensor, plan: Plan, scale: float,
    need1: bool, need2: bool, *, upstream: torch.Tensor | None = None,
    upstream_present: Callable[[str], bool] | None = None,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Gradients of both inputs (``None`` where not needed), in the inputs' dtype.

    ``grad_source`` gives each tile's band gradient: the stored volume's
    gradient ``(B, *patch, *out_size)`` as a tensor, or a fused reduction's
    own :class:`~tiledcorr.engine.GradSource` (:mod:`tiledcorr.reduce`), which
    must pass the gradient it was given as ``upstream`` and may say which value
    classes its band gradients can hold (``upstream_present``, see
    :func:`tiledcorr.nonfinite.run_backward`). Where the inputs or that
    gradient hold NaN or Inf, every entry gets its in-image IEEE value
    (:mod:`tiledcorr.nonfinite`).
    """
    g = plan.geometry
    acc_dtype = compute_dtype(input1.dtype)
    present = upstream_present
    if isinstance(grad_source, torch.Tensor):
        upstream = grad_source
        grad_source = volume_grad(upstream)
        present = nonfinite.Indicators(upstream).present
    elif upstream is None:
        raise TypeError("backward_inputs: a gradient source needs the gradient it was made from (upstream=)")
    ieee = not g.is_empty and not nonfinite.all_finite(input1, input2, upstream)

    def attempt(p: Plan):
        grad1 = torch.zeros(input1.shape, dtype=acc_dtype, device=input1.device) if need1 else None
        grad2 = torch.zeros(input2.shape, dtype=acc_dtype, device=input2.device) if need2 else None
        if ieee:  # zero padding is not exact for NaN and Inf
            nonfinite.run_backward(input1, input2, p, grad1, grad2, grad_source, scale=scale, upstream_present=present)
        elif not g.is_empty:
            run_backward(input1, input2, g, p.tiling, grad1, grad2, grad_source, scale=scale)
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
    def backward(ctx: Any, grad_out: torch.Tensor):
        input1, input2 = ctx.saved_tensors
        need1, need2 = ctx.needs_input_grad[:2]
        with torch.no_grad():
            grad1, grad2 = backward_inputs(input1, input2, grad_out, ctx.plan, ctx.scale, need1, need2)
        return guard_double_backward(grad1, input1, input2), guard_double_backward(grad2, input1, input2), None, None


DOUBLE_BACKWARD_MESSAGE = (
    "tiledcorr's correlation is differentiable once: its gradient cannot be differentiated "
    "again (double backward, e.g. a gradient penalty with create_graph=True through the correlation)"
)


class _NoDoubleBackward(torch.autograd.Function):
    """Identity on a gradient; differentiating it raises :data:`DOUBLE_BACKWARD_MESSAGE`."""

    @staticmethod
    def forward(grad: torch.Tensor, *inputs: torch.Tensor) -> torch.Tensor:
        return grad.view_as(grad)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: torch.Tensor) -> None:
        pass

    @staticmethod
    def backward(ctx: Any, *grads: torch.Tensor):
        raise RuntimeError(DOUBLE_BACKWARD_MESSAGE)


def guard_double_backward(grad: torch.Tensor | None, *inputs: torch.Tensor) -> torch.Tensor | None:
    """With ``create_graph=True``, attach a node to ``grad`` that raises if differentiated.

    Without it the gradient would silently not require grad, and the user would
    meet torch's "does not require grad" far from the cause.
    """
    if grad is None or not torch.is_grad_enabled():
        return grad
    return _NoDoubleBackward.apply(grad, *inputs)
