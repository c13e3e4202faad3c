"""Gradient sources of the fused reductions: each tile's band gradient from a reduction's result gradient."""

from __future__ import annotations

import math
from typing import Any, Callable

import torch

from ..execution import nonfinite
from ..execution.tiles import Tile, positions_index
from ..geometry import Geometry
from .indices import BOOL_BYTES, INDEX_BYTES, flat_strides


def selection_backward_cost(elem: int, k: int) -> dict[str, int]:
    """Backward temporaries of :func:`_selection_grad`: the band gradient; per position and
    selected value, the gradient, the index arithmetic (int64) and the in-block masks."""
    return {"backward_band": elem, "backward_position": k * (2 * elem + 5 * INDEX_BYTES + 3 * BOOL_BYTES)}


def selection_grad(geometry: Geometry, index: torch.Tensor, grad_values: torch.Tensor, dtype: torch.dtype) -> Callable:
    """Gradient source of selected values: each value's gradient goes to its displacement.

    Args:
        index: ``(B, k, *out_size)`` flat displacement indices of the selected values.
        grad_values: ``(B, k, *out_size)``, the gradient of those values.
        dtype: the compute dtype.
    """
    strides = flat_strides(geometry.patch)

    def source(ctx: Any, tile: Tile) -> torch.Tensor:
        where = positions_index(geometry, tile, slice(None))
        selected, grad = index[where], grad_values[where].to(dtype)  # (Bt, k, *U)
        local = torch.zeros_like(selected)
        inside = torch.ones_like(selected, dtype=torch.bool)
        for d, span in enumerate(tile.spans):
            j = selected // strides[d] % geometry.patch[d] - span.disp_start
            inside &= (j >= 0) & (j < span.disp_count)
            local.mul_(span.disp_count).add_(j)
        out = torch.zeros((tile.batch, math.prod(tile.displacements), *tile.positions), dtype=dtype, device=grad.device)
        # Values selected outside the tile add 0 at local index 0 (masked, so a NaN gradient cannot leak).
        out.scatter_add_(1, local.masked_fill_(~inside, 0), grad.masked_fill(~inside, 0))
        return out.view(tile.batch, *tile.displacements, *tile.positions)

    return source


def selection_classes(grad_values: torch.Tensor) -> Callable[[str], bool]:
    """Which value classes a selection's band gradients hold: zero, and those of ``grad_values``.

    Lets the exact NaN/Inf backward skip the pairs that cannot occur
    (:func:`tiledcorr.nonfinite.run_backward`); evaluated only on that path.
    """
    classes = nonfinite.Indicators(grad_values)
    return lambda name: name == "zero" or classes.present(name)


def softargmax_grad(
    geometry: Geometry, m: torch.Tensor, z: torch.Tensor, expectation: torch.Tensor, grad: torch.Tensor, temperature: float,
) -> Callable:
    """Gradient source of the soft-argmax ``E = sum_j p_j d_j``.

    ``dE_c/dv_j = p_j (d_jc - E_c) / T`` with ``p_j = exp(v_j/T - m) / z``
    from the forward's final ``m`` and ``z``, so the band gradient is
    ``p_j * sum_c g_c (d_jc - E_c) / T``.

    Args:
        m, z: ``(B, *out_size)``, the final running max and normaliser.
        expectation: ``(B, N, *out_size)``, the result ``E``.
        grad: ``(B, N, *out_size)``, the gradient of ``E``.
    """
    N = geometry.ndim
    dtype = m.dtype

    def source(ctx: Any, tile: Tile) -> torch.Tensor:
        p = ctx.recompute_band(tile)  # (Bt, *J, *U), a new tensor we may overwrite
        over_j = (slice(None), *(None,) * N)  # broadcast (Bt, *U) over the J axes
        p.div_(temperature).sub_(m[positions_index(geometry, tile)][over_j]).exp_().div_(z[positions_index(geometry, tile)][over_j])
        g = grad[positions_index(geometry, tile, slice(None))].to(dtype)  # (Bt, N, *U)
        e = expectation[positions_index(geometry, tile, slice(None))].to(dtype)
        weight = torch.empty_like(p)
        weight.copy_((g * e).sum(dim=1).neg_()[over_j])
        for c, span in enumerate(tile.spans):
            shift = torch.tensor(geometry.shifts(c)[span.disp_start : span.disp_start + span.disp_count], dtype=dtype, device=p.device)
            along_c = [1] * (1 + 2 * N)
            along_c[1 + c] = span.disp_count
            weight.addcmul_(shift.view(along_c), g[:, c][over_j])
        return p.mul_(weight).div_(temperature)

    return source

