"""The correlation as ``torch.library`` custom operators, so ``torch.compile`` keeps it in the graph.

``torch.ops.tiledcorr.correlate`` and ``torch.ops.tiledcorr.correlate_backward``
take only what the compiler can carry (tensors, ints, a float, a string):

* the geometry's parameters, one int per spatial dimension (padding may be
  negative and ``out_limit`` crops the output, for the FlowNet shim);
* ``scale``, the normalisation factor;
* ``budget``, the ``memory_budget`` argument encoded by :func:`encode_budget`.

Planning (which reads the free memory and caches plans in Python) happens
inside the operators, at run time, so a compiled model traces through
:func:`tiledcorr.correlate` without a graph break. The forward plans for the
forward alone and the backward for the backward, each under the budget. Fake
(meta) kernels give the output shapes from the input shapes.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch

from .autograd import backward_inputs, forward_volume, guard_double_backward
from .geometry import Geometry
from .planner import Plan, SinkCost, check_output_fits, plan_geometry
from .typing import BudgetLike

_PARAMS = ("kernel", "patch", "stride", "padding", "dilation", "dilation_patch")


def encode_budget(memory_budget: BudgetLike) -> str | None:
    """``memory_budget`` as a string an operator can take, or None for a form it cannot carry.

    Only the form is encoded; the value is checked (with the usual error) when
    the operator resolves it. A form that is none of the accepted types gives
    None, and the caller takes the eager path, which reports it.
    """
    if memory_budget is None:
        return ""
    if isinstance(memory_budget, bool):
        return None
    if isinstance(memory_budget, int):
        return f"i:{memory_budget}"
    if isinstance(memory_budget, float):
        return f"f:{memory_budget!r}"
    if isinstance(memory_budget, str):
        return f"s:{memory_budget}"
    return None


def decode_budget(encoded: str) -> BudgetLike:
    """The ``memory_budget`` that :func:`encode_budget` encoded."""
    if encoded == "":
        return None
    kind, _, text = encoded.partition(":")
    return {"i": int, "f": float, "s": str}[kind](text)


def geometry_of(
    shape: Sequence[int], kernel: Sequence[int], patch: Sequence[int], stride: Sequence[int], padding: Sequence[int],
    dilation: Sequence[int], dilation_patch: Sequence[int], out_limit: Sequence[int],
) -> Geometry:
    """The :class:`Geometry` of inputs of ``shape`` and already validated parameters."""
    return Geometry(
        batch=int(shape[0]), channels=int(shape[1]), in_size=tuple(int(n) for n in shape[2:]),
        kernel=tuple(kernel), patch=tuple(patch), stride=tuple(stride), padding=tuple(padding),
        dilation=tuple(dilation), dilation_patch=tuple(dilation_patch),
        out_limit=tuple(out_limit) if out_limit else None,
    )


def geometry_args(geometry: Geometry) -> tuple[list[int], ...]:
    """The operators' geometry arguments: the six parameters and ``out_limit`` (empty for none)."""
    return (*(list(getattr(geometry, name)) for name in _PARAMS), list(geometry.out_limit or ()))


def plan_at_run_time(input1: torch.Tensor, geometry: Geometry, budget: str, requires_grad: bool,
                     sink_cost: SinkCost | None = None) -> Plan:
    """The plan an operator makes when it runs, for its inputs and encoded budget."""
    return plan_geometry(geometry, dtype=input1.dtype, device=input1.device, memory_budget=decode_budget(budget),
                         requires_grad=requires_grad, sink_cost=sink_cost)


def input_grads_or_empty(input1: torch.Tensor, input2: torch.Tensor, grad1: torch.Tensor | None,
                         grad2: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """A backward operator's results: an empty tensor stands for a gradient that is not needed."""
    return (input1.new_empty(0) if grad1 is None else grad1), (input2.new_empty(0) if grad2 is None else grad2)


def input_grads_fake(input1: torch.Tensor, input2: torch.Tensor, need1: bool, need2: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The fake (meta) results of a backward operator: the inputs' shapes, or empty where not needed."""
    return input1.new_empty(input1.shape if need1 else (0,)), input2.new_empty(input2.shape if need2 else (0,))


def register_backward(op: Any, backward: Callable[..., tuple[torch.Tensor, torch.Tensor]], *, save_results: bool) -> None:
    """Make ``op(input1, input2, *args)`` differentiable in its inputs through a backward operator.

    ``backward(grad, input1, input2, *results, *args, need1, need2)`` gets the
    gradient of ``op``'s (first) result; with ``save_results`` also every
    result ``op`` returned (the reductions' indices or softmax statistics).
    """

    def setup_context(ctx: Any, inputs: tuple, output: Any) -> None:
        input1, input2, *args = inputs
        ctx.save_for_backward(input1, input2, *(output if save_results else ()))
        ctx.args = args

    def differentiate(ctx: Any, grad: torch.Tensor, *_other_grads: Any) -> tuple:
        input1, input2, *results = ctx.saved_tensors
        need1, need2 = ctx.needs_input_grad[:2]
        grad1, grad2 = backward(grad, input1, input2, *results, *ctx.args, need1, need2)
        grad1 = guard_double_backward(grad1, input1, input2) if need1 else None
        grad2 = guard_double_backward(grad2, input1, input2) if need2 else None
        return (grad1, grad2) + (None,) * len(ctx.args)

    op.register_autograd(differentiate, setup_context=setup_context)


@torch.library.custom_op("tiledcorr::correlate", mutates_args=())
def correlate_op(
    input1: torch.Tensor, input2: torch.Tensor, kernel: Sequence[int], patch: Sequence[int], stride: Sequence[int],
    padding: Sequence[int], dilation: Sequence[int], dilation_patch: Sequence[int], out_limit: Sequence[int],
    scale: float, budget: str,
) -> torch.Tensor:
    """The cost volume ``(B, *patch, *out_size)``; see the module docstring for the arguments."""
    geometry = geometry_of(input1.shape, kernel, patch, stride, padding, dilation, dilation_patch, out_limit)
    plan = plan_at_run_time(input1, geometry, budget, requires_grad=False)
    check_output_fits(plan, input1.device)
    return forward_volume(input1, input2, plan, scale)


@correlate_op.register_fake
def _correlate_fake(input1, input2, kernel, patch, stride, padding, dilation, dilation_patch, out_limit, scale, budget):
    geometry = geometry_of(input1.shape, kernel, patch, stride, padding, dilation, dilation_patch, out_limit)
    return input1.new_empty(geometry.out_shape)


@torch.library.custom_op("tiledcorr::correlate_backward", mutates_args=())
def correlate_backward_op(
    grad: torch.Tensor, input1: torch.Tensor, input2: torch.Tensor, kernel: Sequence[int], patch: Sequence[int],
    stride: Sequence[int], padding: Sequence[int], dilation: Sequence[int], dilation_patch: Sequence[int],
    out_limit: Sequence[int], scale: float, budget: str, need1: bool, need2: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Both input gradients; an empty tensor stands for one that is not needed."""
    geometry = geometry_of(input1.shape, kernel, patch, stride, padding, dilation, dilation_patch, out_limit)
    plan = plan_at_run_time(input1, geometry, budget, requires_grad=True)
    return input_grads_or_empty(input1, input2, *backward_inputs(input1, input2, grad, plan, scale, need1, need2))


@correlate_backward_op.register_fake
def _correlate_backward_fake(grad, input1, input2, kernel, patch, stride, padding, dilation, dilation_patch, out_limit,
                             scale, budget, need1, need2):
    return input_grads_fake(input1, input2, need1, need2)


register_backward(correlate_op, torch.ops.tiledcorr.correlate_backward, save_results=False)


def correlate_volume(input1: torch.Tensor, input2: torch.Tensor, geometry: Geometry, scale: float,
                     budget: str) -> torch.Tensor:
    """``torch.ops.tiledcorr.correlate`` for validated inputs, a geometry and an encoded budget."""
    return torch.ops.tiledcorr.correlate(input1, input2, *geometry_args(geometry), float(scale), budget)
