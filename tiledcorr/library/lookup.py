"""The look-up as ``torch.library`` operators, differentiable in both feature maps.

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
      gradient) raises :data:`tiledcorr.library.registration.DOUBLE_BACKWARD_MESSAGE`.
"""

from __future__ import annotations

import torch

from ..execution.lookup import lookup_backward, lookup_forward
from ..dtypes import compute_dtype
from ..planning.lookup import LookupPlan, plan_lookup
from .common import decode_budget
from .registration import define, register_backward

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


def _correlate_lookup(fmap1: torch.Tensor, fmap2: torch.Tensor, coords: torch.Tensor, radius: int, num_levels: int,
                      scale: float, budget: str) -> torch.Tensor:
    """The look-up ``(B, num_levels*(2r+1)**2, H, W)``; see the module docstring for the arguments."""
    plan = _plan(fmap1, radius, num_levels, budget, requires_grad=False)
    return lookup_forward(fmap1, fmap2, coords, plan, scale)


def _correlate_lookup_fake(fmap1, fmap2, coords, radius, num_levels, scale, budget):
    return fmap1.new_empty(_output_shape(fmap1, radius, num_levels), dtype=compute_dtype(fmap1.dtype))


def _correlate_lookup_backward(grad: torch.Tensor, fmap1: torch.Tensor, fmap2: torch.Tensor, coords: torch.Tensor,
                               radius: int, num_levels: int, scale: float, budget: str, need1: bool,
                               need2: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients of fmap1 and fmap2 in their dtype; an empty tensor stands for one that is not needed."""
    plan = _plan(fmap1, radius, num_levels, budget, requires_grad=True)
    grad1, grad2 = lookup_backward(grad, fmap1, fmap2, coords, plan, scale, need1, need2)
    return (fmap1.new_empty(0) if grad1 is None else grad1), (fmap2.new_empty(0) if grad2 is None else grad2)


def _correlate_lookup_backward_fake(grad, fmap1, fmap2, coords, radius, num_levels, scale, budget, need1, need2):
    return (fmap1.new_empty(fmap1.shape if need1 else (0,)), fmap2.new_empty(fmap2.shape if need2 else (0,)))


def _refuse_coords_grad(needs_input_grad) -> None:
    if needs_input_grad[2]:
        raise RuntimeError(COORDS_GRAD_MESSAGE)


correlate_lookup_op = define(
    "correlate_lookup(Tensor fmap1, Tensor fmap2, Tensor coords, SymInt radius, SymInt num_levels, float scale, "
    "str budget) -> Tensor", _correlate_lookup, _correlate_lookup_fake)
correlate_lookup_backward_op = define(
    "correlate_lookup_backward(Tensor grad, Tensor fmap1, Tensor fmap2, Tensor coords, SymInt radius, "
    "SymInt num_levels, float scale, str budget, bool need1, bool need2) -> (Tensor, Tensor)",
    _correlate_lookup_backward, _correlate_lookup_backward_fake)
# The saved inputs only: the backward recomputes per tile.
register_backward(correlate_lookup_op, correlate_lookup_backward_op, differentiable=3, check=_refuse_coords_grad)
