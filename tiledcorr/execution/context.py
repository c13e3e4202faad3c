"""What a strategy needs for one call: the inputs, geometry, workspace and scale, and gather/scatter helpers."""

from __future__ import annotations

import functools
import itertools
import math
from typing import Any

import torch

from ..geometry import Geometry
from .gather import SMALL_BUFFER, gather, input1_values, input1_window, input2_window, padded, scatter_add
from .sinks import CaptureSink
from .tiles import Tile
from .workspace import Workspace


@functools.lru_cache(maxsize=64)
def kernel_offsets(kernel: tuple[int, ...]) -> tuple[tuple[int, ...], ...]:
    """Every offset of the kernel window, row-major."""
    return tuple(itertools.product(*(range(k) for k in kernel)))


class TileContext:
    """What a strategy needs for one call: inputs, geometry, workspace, scale."""

    def __init__(self, geometry: Geometry, x1: torch.Tensor, x2: torch.Tensor, ws: Workspace, scale: float, strategy: Any) -> None:
        self.geometry, self.x1, self.x2, self.ws, self.scale = geometry, x1, x2, ws, scale
        self.strategy = strategy
        self.offsets = kernel_offsets(geometry.kernel)
        # With one kernel offset and no conversion, small buffers are filled by one padding call (a new
        # tensor, not the workspace's), and a tile reading all of input1 as it lies (unscaled) reads it in place.
        self._one_offset = len(self.offsets) == 1
        self._pad_x1 = self._one_offset and x1.dtype == ws.dtype
        self._pad_x2 = self._one_offset and x2.dtype == ws.dtype
        self._x1_as_is = scale == 1.0 and x1.is_contiguous()

    def recompute_band(self, tile: Tile) -> torch.Tensor:
        """The tile's forward values ``(Bt, *J, *U)`` as a new tensor (for backward passes).

        Uses the forward's workspace buffers, so call it before the backward
        writes into them.
        """
        captured: list[torch.Tensor] = []
        self.strategy.forward(self, tile, CaptureSink(captured))
        return captured[0]

    def gather_x1(self, tile: Tile, out: torch.Tensor | None = None) -> torch.Tensor:
        """``(Bt, kvol, C, *U)`` input1 values at the tile's positions, times the scale.

        Written into the workspace's ``x1`` buffer, or into ``out`` (any
        strides). Read-only: with one kernel offset and a small tile it is a
        new tensor (:func:`~tiledcorr.execution.gather.padded`), and where the
        tile covers all of a contiguous input1 with no scaling or conversion,
        input1 itself (a view).
        """
        g = self.geometry
        if out is None and self._pad_x1:
            window = input1_window(g, tile, self.offsets[0])
            if window is not None and (window.small or (window.whole and self._x1_as_is)):
                return input1_values(self.x1, window, self.scale).unsqueeze(1)
        buf = self.ws.view("x1", tile.batch, len(self.offsets), g.channels, *tile.positions) if out is None else out
        for k, offset in enumerate(self.offsets):
            gather(self.x1, buf[:, k], input1_window(g, tile, offset))
        if self.scale != 1.0:
            buf.mul_(self.scale)
        return buf

    def input1_in_place(self, tile: Tile) -> torch.Tensor | None:
        """``(Bt, 1, C, *U)``: the tile's input1 values as a view of input1, unscaled; None where they must be gathered.

        They lie in input1 as a matmul can read them when there is one kernel
        offset, no dtype conversion, no padding inside the tile, and unit
        steps along input1's contiguous last dimension. Reading them there
        saves the gather: 12% of an MM-Tracker or PWC-Net forward (2-core AMD
        EPYC, 2026-12-02). The caller applies :attr:`scale` itself.
        """
        if not self._pad_x1 or self.x1.stride(-1) != 1:
            return None
        window = input1_window(self.geometry, tile, self.offsets[0])
        if window is None or window.margins or window.src[-1].step != 1:
            return None
        return (self.x1 if window.src_all else self.x1[window.src]).unsqueeze(1)

    def gather_x2(self, tile: Tile, extent: tuple[int, ...]) -> torch.Tensor:
        """``(Bt, kvol, C, *E)`` the dense input2 region the tile reaches (read-only)."""
        g = self.geometry
        if self._pad_x2:
            window = input2_window(g, tile, self.offsets[0], extent)
            if window is not None and window.small:
                return padded(self.x2, window).unsqueeze(1)
        buf = self.ws.view("x2", tile.batch, len(self.offsets), g.channels, *extent)
        for k, offset in enumerate(self.offsets):
            gather(self.x2, buf[:, k], input2_window(g, tile, offset, extent))
        return buf

    def bmm(self, name: str, shape: tuple[int, ...], a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """``torch.bmm(a, b)`` seen as ``shape``: in the workspace's ``name`` buffer, or a new tensor if small.

        Below :data:`~tiledcorr.execution.gather.SMALL_BUFFER` elements the
        calls of a workspace view cost more than the allocation, and the
        lazily allocated buffer is then never allocated.
        """
        if math.prod(shape) <= SMALL_BUFFER:
            return torch.bmm(a, b).view(shape)
        out = self.ws.view(name, *shape)
        torch.bmm(a, b, out=out.view(a.shape[0], a.shape[1], b.shape[2]))
        return out

    def grad1_in_place(self, grad1: torch.Tensor, tile: Tile) -> torch.Tensor | None:
        """``grad1`` as ``(B, 1, C, *U)`` where the tile's input1 values are all of input1 as it lies.

        Then a strategy can add its product into the gradient directly (with
        the scale as the factor) instead of into the ``g1`` buffer and then
        :meth:`scatter_g1`. None otherwise.
        """
        if not self._one_offset or not grad1.is_contiguous() or grad1.dtype != self.ws.dtype:
            return None
        window = input1_window(self.geometry, tile, self.offsets[0])
        return grad1.unsqueeze(1) if window is not None and window.whole else None

    def scatter_g1(self, grad1: torch.Tensor, tile: Tile, buf: torch.Tensor) -> None:
        if self.scale != 1.0:
            buf.mul_(self.scale)
        for k, offset in enumerate(self.offsets):
            scatter_add(grad1, buf[:, k], input1_window(self.geometry, tile, offset))

    def scatter_g2(self, grad2: torch.Tensor, tile: Tile, buf: torch.Tensor, extent: tuple[int, ...]) -> None:
        """Add ``buf`` ``(Bt, kvol, C, *E)`` into ``grad2`` over the tile's region.

        No scaling here: ``buf`` is a product with ``X1``, which was gathered scaled.
        """
        for k, offset in enumerate(self.offsets):
            scatter_add(grad2, buf[:, k], input2_window(self.geometry, tile, offset, extent))

