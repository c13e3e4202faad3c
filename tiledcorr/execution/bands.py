"""A tile's band of the cost volume, shape ``(Bt, *J, *U)``, and its position-major twin ``(Bt, *U, *J)``."""

from __future__ import annotations

import functools
import math

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


def transpose_band(dst: torch.Tensor, src: torch.Tensor, dim: int) -> None:
    """``dst.copy_(src)`` for a band that changes between volume and position-major order.

    PyTorch's copy walks the destination's layout; into a position-major band
    it reads the displacement-major source once per position across every
    displacement, a working set of thousands of cache lines and pages spread
    over the volume (3.3-3.9 ns per element on the development machine). On
    CPU this copies a few displacements along ``dim`` per call instead, which
    keeps that set to a few dozen (1.7-1.8 ns), each call still big enough for
    every thread.
    """
    n = dst.shape[dim]
    if dst.device.type != "cpu" or n <= 1:
        dst.copy_(src)
        return
    per_index = dst.numel() // n
    chunk = max(1, -(-_CPU_GRAIN * torch.get_num_threads() // max(per_index, 1)))
    if chunk >= n:
        dst.copy_(src)
        return
    for start in range(0, n, chunk):
        length = min(chunk, n - start)
        dst.narrow(dim, start, length).copy_(src.narrow(dim, start, length))

