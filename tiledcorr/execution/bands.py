"""A tile's band of the cost volume, shape ``(Bt, *J, *U)``, and its position-major twin ``(Bt, *U, *J)``."""

from __future__ import annotations

import torch

from ..geometry import Geometry
from .tiles import Tile


def y_band(y: torch.Tensor, geometry: Geometry, tile: Tile) -> torch.Tensor:
    """From ``y`` of shape ``(Bt, *U, *E)`` the band ``(Bt, *U, *J)``: ``y[b, *a, *(a*m + jj)]``."""
    N = geometry.ndim
    strides = y.stride()
    pos_strides = [strides[1 + d] + geometry.lattice(d).region_step * strides[1 + N + d] for d in range(N)]
    return y.as_strided(
        (tile.batch, *tile.positions, *tile.displacements),
        (strides[0], *pos_strides, *strides[1 + N :]),
        y.storage_offset(),
    )


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
    for start in range(0, n, chunk):
        length = min(chunk, n - start)
        dst.narrow(dim, start, length).copy_(src.narrow(dim, start, length))

