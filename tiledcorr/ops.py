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

from typing import Sequence

import torch

from .autograd import backward_inputs, forward_volume, guard_double_backward
from .geometry import Geometry
from .planner import check_output_fits, plan_geometry
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


def _plan(input1: torch.Tensor, geometry: Geometry, budget: str, requires_grad: bool):
    return plan_geometry(geometry, dtype=input1.dtype, device=input1.device, memory_budget=decode_budget(budget),
                         requires_grad=requires_grad)


@torch.library.custom_op("tiledcorr::correlate", mutates_args=())
def correlate_op(
    input1: torch.Tensor, input2: torch.Tensor, kernel: Sequence[int], patch: Sequence[int], stride: Sequence[int],
    padding: Sequence[int], dilation: Sequence[int], dilation_patch: Sequence[int], out_limit: Sequence[int],
    scale: float, budget: str,
) -> torch.Tensor:
    """The cost volume ``(B, *patch, *out_size)``; see the module docstring for the arguments."""
    geometry = geometry_of(input1.shape, kernel, patch, stride, padding, dilation, dilation_patch, out_limit)
    plan = _plan(input1, geometry, budget, requires_grad=False)
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
    plan = _plan(input1, geometry, budget, requires_grad=True)
    grad1, grad2 = backward_inputs(input1, input2, grad, plan, scale, need1, need2)
    return (input1.new_empty(0) if grad1 is None else grad1), (input2.new_empty(0) if grad2 is None else grad2)


@correlate_backward_op.register_fake
def _correlate_backward_fake(grad, input1, input2, kernel, patch, stride, padding, dilation, dilation_patch, out_limit,
                             scale, budget, need1, need2):
    return (input1.new_empty(input1.shape if need1 else (0,)), input2.new_empty(input2.shape if need2 else (0,)))


def _setup_context(ctx, inputs, output) -> None:
    input1, input2, *rest = inputs
    ctx.save_for_backward(input1, input2)
    ctx.rest = rest


def _backward(ctx, grad):
    input1, input2 = ctx.saved_tensors
    need1, need2 = ctx.needs_input_grad[:2]
    grad1, grad2 = torch.ops.tiledcorr.correlate_backward(grad, input1, input2, *ctx.rest, need1, need2)
    grad1 = guard_double_backward(grad1, input1, input2) if need1 else None
    grad2 = guard_double_backward(grad2, input1, input2) if need2 else None
    return (grad1, grad2) + (None,) * len(ctx.rest)


correlate_op.register_autograd(_backward, setup_context=_setup_context)


def correlate_volume(input1: torch.Tensor, input2: torch.Tensor, geometry: Geometry, scale: float,
                     budget: str) -> torch.Tensor:
    """``torch.ops.tiledcorr.correlate`` for validated inputs, a geometry and an encoded budget."""
    return torch.ops.tiledcorr.correlate(input1, input2, *geometry_args(geometry), float(scale), budget)
