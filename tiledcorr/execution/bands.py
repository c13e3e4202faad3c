"""A tile's band of the cost volume, shape ``(Bt, *J, *U)``, and its position-major twin ``(Bt, *U, *J)``."""

from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np
import torch

from ..geometry import Geometry
from .tiles import Tile


def volume_band(y: torch.Tensor, geometry: Geometry, tile: Tile, extent: tuple[int, ...]) -> torch.Tensor:
    """From ``y`` of shape ``(Bt, T, R)`` (rows contiguous) the band in volume order ``(Bt, *J, *U)`` (a view).

    Seen as ``(Bt, *U, *E)``, ``y`` holds every product of the tile; the band
    is ``y[b, *a, *(a*m + jj)]`` (``m``: the lattice's region step), with the
    displacements first. One ``as_strided``: a small call spends its time in such views.
    """
    size, stride = volume_band_layout(geometry, tile, tuple(extent), y.stride(0), y.stride(1))
    return y.as_strided(size, stride, y.storage_offset())


@functools.lru_cache(maxsize=4096)
def volume_band_layout(geometry: Geometry, tile: Tile, extent: tuple[int, ...], batch_stride: int,
                       row_stride: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Size and strides of :func:`volume_band` in a ``y`` of these batch and row strides."""
    N = geometry.ndim
    region = [math.prod(extent[d + 1 :]) for d in range(N)]
    position = [row_stride * math.prod(tile.positions[d + 1 :]) for d in range(N)]
    steps = [position[d] + geometry.lattice(d).region_step * region[d] for d in range(N)]
    return (tile.batch, *tile.displacements, *tile.positions), (batch_stride, *region, *steps)


def swap_band_order(band: torch.Tensor, ndim: int) -> torch.Tensor:
    """``(Bt, *U, *J)`` <-> ``(Bt, *J, *U)``: tile order to volume order and back (a permuted view)."""
    return band.permute(0, *range(1 + ndim, 1 + 2 * ndim), *range(1, 1 + ndim))


#: Elements per thread below which PyTorch runs an elementwise CPU kernel on one thread.
_CPU_GRAIN = 32768


#: Rows of positions a band goes through ``scratch`` at a time (:func:`transpose_band`).
SCRATCH_ROWS = 8


def scratch_elements(batch: Any, rows: Any, positions_per_row: Any, displacements: Any) -> Any:
    """Elements of :func:`transpose_band`'s scratch for tiles of ``rows`` leading rows of positions.

    Each argument is an int or a numpy array of one value per tiling (the planner's rows).

    Args:
        positions_per_row: positions in one leading row (``U2 * ... * UN``);
        displacements: displacements per position (``J1 * ... * JN``).
    """
    return batch * np.minimum(rows, SCRATCH_ROWS) * positions_per_row * displacements


def transpose_band(dst: torch.Tensor, src: torch.Tensor, dim: int, scratch: torch.Tensor | None = None) -> None:
    """``dst.copy_(src)`` for a band that changes between volume and position-major order.

    PyTorch's copy walks the destination's layout; into a position-major band
    it reads the displacement-major source once per position across every
    displacement, a working set of thousands of cache lines and pages spread
    over the volume (3.3-3.9 ns per element on the development machine). On
    CPU this copies a few displacements along ``dim`` per call instead, which
    keeps that set to a few dozen (1.7-1.8 ns), each call still big enough for
    every thread.

    With a position-major ``dst`` ``(Bt, *U, *J)``, a source whose last
    position dimension is contiguous (whole rows of the volume) and a flat
    ``scratch`` (of :func:`scratch_elements`), a CPU copy goes through the scratch instead,
    :data:`SCRATCH_ROWS` leading rows of positions at a time: first in the
    source's order with the last position dimension innermost (whole runs of
    the volume's rows, ``(.., *J, UN)``), then from there into ``dst``, a
    transposition within those few rows that stays in the cache. Two copies,
    at 0.55-0.6x the time of the one above (patch-41 tiles, 2-core AMD EPYC,
    2026-12-02, scratch).
    """
    n = dst.shape[dim]
    if not dst.is_cpu or n <= 1:
        dst.copy_(src)
        return
    # Through the scratch where the volume's rows are contiguous and it holds a row of positions at least.
    if scratch is not None and src.stride((dst.dim() - 1) // 2) == 1 and scratch.numel() >= dst[:, :1].numel():
        _through_scratch(dst, src, scratch)
        return
    per_index = dst.numel() // n
    chunk = max(1, -(-_CPU_GRAIN * torch.get_num_threads() // max(per_index, 1)))
    if chunk >= n:
        dst.copy_(src)
        return
    for start in range(0, n, chunk):
        length = min(chunk, n - start)
        dst.narrow(dim, start, length).copy_(src.narrow(dim, start, length))


def _through_scratch(dst: torch.Tensor, src: torch.Tensor, scratch: torch.Tensor) -> None:
    """:func:`transpose_band` of a position-major ``dst`` ``(Bt, *U, *J)`` through ``scratch``, a few rows at a time."""
    ndim = (dst.dim() - 1) // 2
    # (Bt, U1, .., U(N-1), *J, UN): the last position dimension (the volume's rows) innermost.
    order = (0, *range(1, ndim), *range(1 + ndim, 1 + 2 * ndim), ndim)
    rows = dst.shape[1]
    step = min(rows, scratch.numel() // dst[:, :1].numel())  # at least 1 (checked by the caller)
    for start in range(0, rows, step):
        length = min(step, rows - start)
        part = src.narrow(1, start, length).permute(order)
        staged = scratch[: part.numel()].view(part.shape)
        staged.copy_(part)
        dst.narrow(1, start, length).permute(order).copy_(staged)
