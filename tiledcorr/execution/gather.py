"""Gather a tile's input values into a buffer (zeros where the implicit padding lies), and scatter back.

The index arithmetic of a tile depends only on the geometry, the tile and the
kernel offset, so it is computed once (:func:`input1_window`,
:func:`input2_window`, cached) and a repeated call pays only for the copies.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch

from ..geometry import Geometry, clip, input1_start, input1_step, input2_start
from .tiles import Tile

#: Windows cached per (geometry, tile, kernel offset): a few thousand cover every tile of the plans in use.
_WINDOW_CACHE = 8192

#: Buffers of at most this many elements are zeroed whole rather than margin by margin (one call, not four).
SMALL_BUFFER = 16384


@dataclass(frozen=True)
class Window:
    """Where one kernel offset's values of a tile lie: ``source[src]`` fills ``buffer[dst]``.

    Attributes:
        src: index of the in-bounds values in an input ``(B, C, *in_size)``
            (the tile's batch items included).
        dst: index of the same values in a buffer ``(Bt, C, *counts)``.
        margins: indices of the buffer's parts outside ``dst`` (implicit padding):
            one index of the whole buffer where that is small (:data:`SMALL_BUFFER`)
            or where the last dimension has a margin.
        whole: the buffer would hold the whole input, every batch item, in its
            own order (no margins, unit steps): the input itself can stand for it.
        pads: ``torch.constant_pad_nd``'s amounts (last dimension first) that
            turn ``source[src]`` into the buffer's contents.
        small: the buffer holds at most :data:`SMALL_BUFFER` elements.
        src_all: ``src`` is all of the input (then the input is used as it is, without indexing).
    """

    src: tuple[slice, ...]
    dst: tuple[slice, ...]
    margins: tuple[tuple[slice, ...], ...]
    whole: bool
    pads: tuple[int, ...]
    small: bool
    src_all: bool


def _window(tile: Tile, geometry: Geometry, starts, steps, counts) -> Window | None:
    """The :class:`Window` of a lattice of ``counts`` points from ``starts`` by ``steps``; None if none is in bounds."""
    src, dst = [], []
    for n, start, step, count in zip(geometry.in_size, starts, steps, counts):
        lo, hi = clip(start, step, count, n)
        if hi <= lo:
            return None
        first = start + step * lo
        src.append(slice(first, first + step * (hi - lo - 1) + 1, step))
        dst.append(slice(lo, hi))
    # Only the margins are zeroed: zeroing the whole buffer at every border tile cost as much as the copy itself.
    margins = []
    for d, inside in enumerate(dst):
        for margin in (slice(0, inside.start), slice(inside.stop, counts[d])):
            if margin.stop > margin.start:
                index = [slice(None)] * (2 + len(dst))
                index[2 + d] = margin
                margins.append(tuple(index))
    full = (slice(None), slice(None))
    src_all = tile.b0 == 0 and tile.b1 == geometry.batch and all(s == slice(0, n, 1) for s, n in zip(src, geometry.in_size))
    whole = src_all and not margins
    small = tile.batch * geometry.channels * math.prod(counts) <= SMALL_BUFFER
    # A margin of the last dimension is one short run per row of the buffer: zeroing it took 2-2.5x as
    # long as a memset of the whole buffer (MM-Tracker's 512 x 27 x 24 input2 region, 4 columns: 51 us
    # against 20 us, AMD EPYC, 2026-12-02), so then the whole buffer is zeroed in one call.
    last_margin = dst[-1].start > 0 or dst[-1].stop < counts[-1]
    if (len(margins) > 1 and small) or last_margin:
        margins = [(slice(None),) * (2 + len(dst))]
    pads = tuple(v for d in reversed(range(len(dst))) for v in (dst[d].start, counts[d] - dst[d].stop))
    return Window((slice(tile.b0, tile.b1), slice(None), *src), (*full, *dst), tuple(margins), whole, pads, small,
                  src_all)


@functools.lru_cache(maxsize=_WINDOW_CACHE)
def input1_window(geometry: Geometry, tile: Tile, offset: tuple[int, ...]) -> Window | None:
    """Input1's values at the tile's positions for one kernel offset (buffer ``(Bt, C, *U)``)."""
    starts = [input1_start(geometry, d, s, offset[d]) for d, s in enumerate(tile.spans)]
    steps = [input1_step(geometry, d) for d in range(geometry.ndim)]
    return _window(tile, geometry, starts, steps, tile.positions)


@functools.lru_cache(maxsize=_WINDOW_CACHE)
def input2_window(geometry: Geometry, tile: Tile, offset: tuple[int, ...], extent: tuple[int, ...]) -> Window | None:
    """Input2's region of ``extent`` lattice points the tile reaches for one kernel offset (buffer ``(Bt, C, *E)``)."""
    starts = [input2_start(geometry, d, s, offset[d]) for d, s in enumerate(tile.spans)]
    return _window(tile, geometry, starts, geometry.dilation_patch, extent)


def gather(source: torch.Tensor, buffer: torch.Tensor, window: Window | None) -> None:
    """Copy ``source[b, c, start + step*n]`` into ``buffer[b, c, n]``; zeros out of bounds.

    Args:
        source: an input, shape ``(B, C, *in_size)``.
        buffer: shape ``(Bt, C, *counts)``.
        window: from :func:`input1_window` or :func:`input2_window`.
    """
    if window is None:
        buffer.zero_()
        return
    for margin in window.margins:
        buffer[margin].zero_()
    buffer[window.dst].copy_(source if window.src_all else source[window.src])


def padded(source: torch.Tensor, window: Window) -> torch.Tensor:
    """What :func:`gather` writes, as a new tensor ``(Bt, C, *counts)``: one call instead of four or more.

    For small buffers, where each call costs more than the copying. Contiguous
    as the workspace's buffers are (padding keeps a transposed input's layout,
    and the strategies take strided views of what they gather).
    """
    return torch.constant_pad_nd(source if window.src_all else source[window.src], window.pads).contiguous()


def input1_values(x1: torch.Tensor, window: Window, scale: float) -> torch.Tensor:
    """``(Bt, C, *U)``: input1's values in a one-offset ``window`` times ``scale``, without the workspace.

    Input1 itself where the window is all of it as it lies (contiguous,
    unscaled), else :func:`padded` (a new tensor, scaled in place).
    """
    if window.whole and scale == 1.0 and x1.is_contiguous():
        return x1
    values = padded(x1, window)
    return values if scale == 1.0 else values.mul_(scale)


def scatter_add(target: torch.Tensor, buffer: torch.Tensor, window: Window | None) -> None:
    """The adjoint of :func:`gather`: ``target[b, c, start + step*n] += buffer[b, c, n]``."""
    if window is not None:
        (target if window.src_all else target[window.src]).add_(buffer[window.dst])
