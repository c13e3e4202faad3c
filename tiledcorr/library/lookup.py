"""The look-up as ``torch.library`` custom operators, differentiable in both feature maps.

``torch.ops.tiledcorr.correlate_lookup(fmap1, fmap2, coords, radius, num_levels, scale, budget)``
returns ``(B, num_levels*(2r+1)**2, H, W)`` in float32 (float64 for float64
input); ``torch.ops.tiledcorr.correlate_lookup_backward`` gives the gradients
of fmap1 and fmap2 from the output's. They take what the compiler can carry:
the radius and the number of levels, the normalisation ``scale``, and
``budget``, the ``memory_budget`` argument encoded as a string (``""`` for
None, ``"i:<int>"``, ``"f:<float>"``, ``"s:<str>"``; see ``encode_budget``).

Planning happens inside the operators, at run time (it reads the free
memory), so ``torch.compile`` traces a call without a graph break; the
forward plans for the forward, the backward for the backward, each within the
budget. Fake (meta) kernels give the result shapes.

Gradients:
    * ``coords`` get none (RAFT detaches them): asking for one raises.
    * The gradients are not differentiable again: a double backward
      (``create_graph=True`` through the look-up, then a backward of the
      gradient) raises :data:`tiledcorr.library.common.DOUBLE_BACKWARD_MESSAGE`.
"""

from __future__ import annotations

from typing import Any

import torch

from ..execution.lookup import lookup_backward, lookup_forward
from ..dtypes import compute_dtype
from ..planning.lookup import LookupPlan, plan_lookup
from .common import decode_budget, refuse_double_backward

__all__ = ["correlate_lookup_op", "correlate_lookup_backward_op", "COORDS_GRAD_MESSAGE"]

COORDS_GRAD_MESSAGE = (
    "tiledcorr's look-up gives no gradient to coords (RAFT detaches them before every look-up); "
    "pass coords.detach()"
)


def _plan(fmap1: torch.Tensor, radius: int, num_levels: int, budget: str, requires_grad: bool) -> LookupPlan:
    return plan_lookup(tuple(fmap1.shape), num_levels=num_levels, radius=radius, dtype=fmap1.dtype,
                       device=fmap1.device, memory_budget=decode_budget(budget), requires_grad=requires_grad)


def _output_shape(fmap1: torch.Tensor, radius: int, num_levels: int) -> tuple[int, int, int, int]:
    batch, _, height, width = fmap1.shape
    return batch, num_levels * (2 * radius + 1) ** 2, height, width


@torch.library.custom_op("tiledcorr::correlate_lookup", mutates_args=())
def correlate_lookup_op(fmap1: torch.Tensor, fmap2: torch.Tensor, coords: torch.Tensor, radius: int, num_levels: int,
                        scale: float, budget: str) -> torch.Tensor:
    """The look-up ``(B, num_levels*(2r+1)**2, H, W)``; see the module docstring for the arguments."""
    plan = _plan(fmap1, radius, num_levels, budget, requires_grad=False)
    return lookup_forward(fmap1, fmap2, coords, plan, scale)


@correlate_lookup_op.register_fake
def _correlate_lookup_fake(fmap1, fmap2, coords, radius, num_levels, scale, budget):
    return fmap1.new_empty(_output_shape(fmap1, radius, num_levels), dtype=compute_dtype(fmap1.dtype))


@torch.library.custom_op("tiledcorr::correlate_lookup_backward", mutates_args=())
def correlate_lookup_backward_op(grad: torch.Tensor, fmap1: torch.Tensor, fmap2: torch.Tensor, coords: torch.Tensor,
                                 radius: int, num_levels: int, scale: float, budget: str, need1: bool,
                                 need2: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients of fmap1 and fmap2 in their dtype; an empty tensor stands for one that is not needed."""
    plan = _plan(fmap1, radius, num_levels, budget, requires_grad=True)
    grad1, grad2 = lookup_backward(grad, fmap1, fmap2, coords, plan, scale, need1, need2)
    return (fmap1.new_empty(0) if grad1 is None else grad1), (fmap2.new_empty(0) if grad2 is None else grad2)


@correlate_lookup_backward_op.register_fake
def _correlate_lookup_backward_fake(grad, fmap1, fmap2, coords, radius, num_levels, scale, budget, need1, need2):
    return (fmap1.new_empty(fmap1.shape if need1 else (0,)), fmap2.new_empty(fmap2.shape if need2 else (0,)))


def _setup_context(ctx: Any, inputs: tuple, output: torch.Tensor) -> None:
    fmap1, fmap2, coords, *args = inputs
    ctx.save_for_backward(fmap1, fmap2, coords)  # the inputs only: the backward recomputes per tile
    ctx.args = args


def _differentiate(ctx: Any, grad: torch.Tensor) -> tuple:
    fmap1, fmap2, coords = ctx.saved_tensors
    need1, need2, need_coords = ctx.needs_input_grad[:3]
    if need_coords:
        raise RuntimeError(COORDS_GRAD_MESSAGE)
    grad1, grad2 = refuse_double_backward(
        torch.ops.tiledcorr.correlate_lookup_backward(grad, fmap1, fmap2, coords, *ctx.args, need1, need2))
    return (grad1 if need1 else None, grad2 if need2 else None, None) + (None,) * len(ctx.args)


correlate_lookup_op.register_autograd(_differentiate, setup_context=_setup_context)
