"""Gather a tile's input values into a buffer (zeros where the implicit padding lies), and scatter back."""

from __future__ import annotations

import torch

from ..geometry import Geometry, clip, input1_start, input1_step, input2_start
from .tiles import Tile


def _lattice_slices(in_size, starts, steps, counts) -> tuple[list[slice], list[slice]] | None:
    """Source and buffer slices of the in-bounds part of a lattice; None if it is empty."""
    src, dst = [], []
    for n, start, step, count in zip(in_size, starts, steps, counts):
        lo, hi = clip(start, step, count, n)
        if hi <= lo:
            return None
        first = start + step * lo
        src.append(slice(first, first + step * (hi - lo - 1) + 1, step))
        dst.append(slice(lo, hi))
    return src, dst


def _zero_margins(buffer: torch.Tensor, inside: list[slice]) -> None:
    """Zero the parts of ``buffer`` (``(Bt, C, *counts)``) outside the ``inside`` box.

    Only the margins are written: zeroing the whole buffer at every border
    tile cost as much as the copy itself.
    """
    for d, s in enumerate(inside):
        for margin in (slice(0, s.start), slice(s.stop, buffer.shape[2 + d])):
            if margin.stop > margin.start:
                index = [slice(None)] * buffer.dim()
                index[2 + d] = margin
                buffer[tuple(index)].zero_()


def gather(source: torch.Tensor, buffer: torch.Tensor, tile: Tile, starts, steps, counts) -> None:
    """Copy ``source[b, c, start + step*n]`` into ``buffer[b, c, n]``; zeros out of bounds.

    Args:
        source: an input, shape ``(B, C, *in_size)``.
        buffer: shape ``(Bt, C, *counts)``.
    """
    found = _lattice_slices(source.shape[2:], starts, steps, counts)
    if found is None:
        buffer.zero_()
        return
    src, dst = found
    _zero_margins(buffer, dst)
    buffer[(slice(None), slice(None), *dst)].copy_(source[(slice(tile.b0, tile.b1), slice(None), *src)])


def scatter_add(target: torch.Tensor, buffer: torch.Tensor, tile: Tile, starts, steps, counts) -> None:
    """The adjoint of :func:`gather`: ``target[b, c, start + step*n] += buffer[b, c, n]``."""
    found = _lattice_slices(target.shape[2:], starts, steps, counts)
    if found is None:
        return
    src, dst = found
    target[(slice(tile.b0, tile.b1), slice(None), *src)].add_(buffer[(slice(None), slice(None), *dst)])


def input1_lattice(geometry: Geometry, tile: Tile, offset: tuple[int, ...]):
    starts = [input1_start(geometry, d, s, offset[d]) for d, s in enumerate(tile.spans)]
    steps = [input1_step(geometry, d) for d in range(geometry.ndim)]
    return starts, steps, tile.positions


def input2_lattice(geometry: Geometry, tile: Tile, offset: tuple[int, ...], extent):
    starts = [input2_start(geometry, d, s, offset[d]) for d, s in enumerate(tile.spans)]
    return starts, list(geometry.dilation_patch), extent

