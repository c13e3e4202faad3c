"""Displacement indices: a tile's flat indices, and flat indices to displacements in pixels.

The flat index runs row-major over ``patch_size`` (dy-major in 2-D), exactly
as ``volume.flatten(1, N)``; a displacement in pixels is
``(j - (P-1)//2) * dilation_patch`` per dimension, components in the order of
the spatial dimensions: ``(dy, dx)``, or ``(dz, dy, dx)`` for volumes.
"""

from __future__ import annotations

import math

import torch

from ..execution.bands import swap_band_order
from ..execution.tiles import Tile
from ..geometry import Geometry

INDEX_BYTES = 8  # int64 displacement indices
BOOL_BYTES = 1


def flat_strides(patch: tuple[int, ...]) -> list[int]:
    """Row-major strides of the flat displacement index over ``patch``."""
    return [math.prod(patch[d + 1 :]) for d in range(len(patch))]


def tile_indices(geometry: Geometry, tile: Tile, device: torch.device) -> torch.Tensor:
    """Flat global displacement index of each of the tile's ``J`` displacements, ``(prod(J),)``.

    The tile's displacements are a rectangular block of the patch in row-major
    order, so the map is increasing: the first maximum within a tile is the
    one with the lowest global index.
    """
    index = torch.zeros((), dtype=torch.long, device=device)
    for d, span in enumerate(tile.spans):
        local = torch.arange(span.disp_start, span.disp_start + span.disp_count, device=device)
        index = index.unsqueeze(-1) * geometry.patch[d] + local
    return index.reshape(-1)


def cached_tile_indices(cache: dict, geometry: Geometry, tile: Tile, device: torch.device) -> torch.Tensor:
    """:func:`tile_indices`, computed once per displacement block (many tiles share one)."""
    key = tuple((s.disp_start, s.disp_count) for s in tile.spans)
    if key not in cache:
        cache[key] = tile_indices(geometry, tile, device)
    return cache[key]


def shift_table(geometry: Geometry, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``(prod(patch), N)``: the displacement in pixels of each flat index."""
    axes = [torch.tensor(geometry.shifts(d), dtype=dtype, device=device) for d in range(geometry.ndim)]
    grids = torch.meshgrid(*axes, indexing="ij")
    return torch.stack([g.reshape(-1) for g in grids], dim=1)


def index_to_displacement(geometry: Geometry, index: torch.Tensor, dim: int) -> torch.Tensor:
    """Flat displacement indices -> displacements in pixels, stacked at ``dim``.

    Args:
        geometry: the correlation's geometry.
        index: int64 tensor of any shape ``S``.
        dim: where the component axis goes in the result.

    Returns:
        int64 tensor of shape ``S`` with an axis of size ``N`` inserted at ``dim``.
    """
    strides = flat_strides(geometry.patch)
    # Eagerly each component is computed in place in the result (no temporaries
    # of its size); out= is not traceable, so under the compiler they are stacked.
    compiling = torch.compiler.is_compiling()
    shape = list(index.shape)
    shape.insert(dim, geometry.ndim)
    out = None if compiling else torch.empty(shape, dtype=torch.long, device=index.device)
    parts = []
    for d in range(geometry.ndim):
        part = torch.div(index, strides[d], rounding_mode="floor") if out is None else torch.div(
            index, strides[d], rounding_mode="floor", out=out.select(dim, d))
        parts.append(part.remainder_(geometry.patch[d]).sub_(geometry.radius[d]).mul_(geometry.dilation_patch[d]))
    return torch.stack(parts, dim=dim) if out is None else out



def flat_band(band: torch.Tensor, ndim: int, dtype: torch.dtype) -> torch.Tensor:
    """A contiguous copy of the band in tile order, displacements flattened last: ``(Bt, *U, prod(J))``."""
    ordered = swap_band_order(band, ndim)
    flat = torch.empty(ordered.shape, dtype=dtype, device=band.device)
    flat.copy_(ordered)
    return flat.view(*ordered.shape[: 1 + ndim], -1)

