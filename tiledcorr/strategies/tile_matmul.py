"""The ``tile_matmul`` strategy: one dense matmul of a tile's input1 values against its whole input2 region."""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import torch

from ..execution.bands import transpose_band, volume_band, volume_band_layout
from ..execution.context import TileContext, kernel_offsets
from ..execution.gather import SMALL_BUFFER, Window, input1_values, input1_window, input2_window, padded, scatter_add
from ..execution.sinks import Sink
from ..execution.tiles import Tile, iter_tiles, region_extent, volume_index
from ..geometry import Geometry
from ..planning.costs import Cost, CostTerms
from ..planning.registry import Strategy, register
from ..planning.tiling import TileDims, Tiling


@register
class TileMatmul(Strategy):
    """One dense matmul of the input1 tile against its whole input2 region.

    ``Y = X1^T @ X2`` of shape ``(Bt, T, R)`` holds every product the tile
    needs plus some it does not (``R`` > ``J`` per position); the band is taken
    out of ``Y`` as a strided view, without a copy. Fast when the tile is large
    enough for matmul to run near its peak and the region not much larger than
    the displacements.
    """

    name = "tile_matmul"

    def buffers(self, dims: TileDims, backward: bool) -> dict[str, np.ndarray]:
        Bt, K, T, R = dims.Bt, dims.K, dims.T, dims.R
        sizes = {"x1": Bt * K * T, "x2": Bt * K * R, "y": Bt * T * R}
        if backward:
            sizes.update({"g1": Bt * K * T, "g2": Bt * K * R})
        return sizes

    def cost(self, terms: CostTerms) -> Cost:
        d, model, K, elem = terms.dims, terms.model, terms.K, terms.elem
        eff = model.efficiency
        # Positions along the last dimension are the unit-stride rows of the matmul.
        rate = model.matmul_flops * eff(d.T) * eff(d.R) * eff(K) * terms.whole_vectors(d.U[:, -1])
        seconds = 2 * d.Bt * d.T * d.R * K / rate
        y_bytes = elem * d.Bt * d.T * d.R
        forward = seconds + (terms.gather_bytes + terms.band_bytes + y_bytes) / model.bandwidth
        backward = 2 * seconds + (2 * terms.gather_bytes + 2 * terms.band_bytes + 3 * y_bytes) / model.bandwidth
        return Cost(forward, backward)

    def one_tile(self, geometry: Geometry, tiling: Tiling) -> "OneTile | None":
        return one_tile(geometry, tiling)

    def forward(self, ctx: TileContext, tile: Tile, sink: Sink) -> None:
        g = ctx.geometry
        extent = region_extent(g, tile.positions, tile.displacements)
        T, R = math.prod(tile.positions), math.prod(extent)
        x1 = ctx.gather_x1(tile).view(tile.batch, -1, T)
        x2 = ctx.gather_x2(tile, extent).view(tile.batch, -1, R)
        y = ctx.bmm("y", (tile.batch, T, R), x1.transpose(1, 2), x2)
        sink.consume(tile, volume_band(y, g, tile, extent))

    def backward(self, ctx: TileContext, tile: Tile, grad_band: torch.Tensor, grad1, grad2) -> None:
        g = ctx.geometry
        extent = region_extent(g, tile.positions, tile.displacements)
        T, R = math.prod(tile.positions), math.prod(extent)
        gy = ctx.ws.zeroed_view("y", tile.shape, tile.batch, T, R)
        transpose_band(volume_band(gy, g, tile, extent), grad_band, 1)
        if grad1 is not None:
            x2 = ctx.gather_x2(tile, extent).view(tile.batch, -1, R)
            whole = ctx.grad1_in_place(grad1, tile)
            if whole is not None:
                whole.view(tile.batch, -1, T).baddbmm_(x2, gy.transpose(1, 2), alpha=ctx.scale)
            else:
                g1 = ctx.ws.view("g1", tile.batch, len(ctx.offsets), g.channels, *tile.positions)
                torch.bmm(x2, gy.transpose(1, 2), out=g1.view(tile.batch, -1, T))
                ctx.scatter_g1(grad1, tile, g1)
        if grad2 is not None:
            x1 = ctx.gather_x1(tile).view(tile.batch, -1, T)
            g2 = ctx.bmm("g2", (tile.batch, len(ctx.offsets), g.channels, *extent), x1, gy)
            ctx.scatter_g2(grad2, tile, g2, extent)


@dataclass(frozen=True)
class OneTile:
    """A plan of one small tile with one kernel offset (every tiny call): :class:`TileMatmul`'s products, precomputed.

    The same tensor ops as :meth:`TileMatmul.forward` and
    :meth:`TileMatmul.backward` on a small tile (padded copies, one matmul
    per product, the band as one strided view), with every shape, window and
    stride worked out once per plan: a call then pays for the tensor ops and
    not for the workspace, the tile context and a dozen cache lookups (a
    third of a tiny forward's host time). Inputs must be in the compute dtype.

    Attributes:
        tile: the plan's one tile (all of the volume).
        window1, window2: where its input1 values and input2 region lie.
        channels: C; extent: the region ``E``; positions, region: ``T`` and ``R`` (elements of ``U`` and ``E``).
        band_size, band_stride: the band ``(B, *J, *U)`` in the contiguous ``y`` ``(B, T, R)``.
        inside2: ``(size, stride, offset)`` of input2's own values in the contiguous region
            ``(B, C, *E)`` where the region holds all of input2 (else ``None``): one ``as_strided``
            instead of an index per dimension.
    """

    tile: Tile
    window1: Window
    window2: Window
    channels: int
    extent: tuple[int, ...]
    positions: int
    region: int
    band_size: tuple[int, ...]
    band_stride: tuple[int, ...]
    inside2: tuple[tuple[int, ...], tuple[int, ...], int] | None

    def _x1(self, x1: torch.Tensor, scale: float) -> torch.Tensor:
        """``(B, C, T)`` input1 at the tile's positions, times ``scale`` (input1 itself where it can be)."""
        return input1_values(x1, self.window1, scale).view(self.tile.batch, self.channels, self.positions)

    def _x2(self, x2: torch.Tensor) -> torch.Tensor:
        return padded(x2, self.window2).view(self.tile.batch, self.channels, self.region)

    def band(self, x1: torch.Tensor, x2: torch.Tensor, scale: float) -> torch.Tensor:
        """The volume ``(B, *J, *U)`` (a strided view of a new ``(B, T, R)`` product)."""
        y = torch.bmm(self._x1(x1, scale).transpose(1, 2), self._x2(x2))
        return y.as_strided(self.band_size, self.band_stride)

    def volume(self, x1: torch.Tensor, x2: torch.Tensor, scale: float) -> torch.Tensor:
        """The cost volume ``(B, *patch, *out_size)``, a new contiguous tensor (the tile is all of it)."""
        return self.band(x1, x2, scale).contiguous()

    def _grad_product(self, x1: torch.Tensor, grad_band: torch.Tensor) -> torch.Tensor:
        """The product's gradient ``(B, T, R)``: ``grad_band`` ``(B, *J, *U)`` (any strides) in the band, zeros elsewhere."""
        gy = x1.new_zeros((self.tile.batch, self.positions, self.region))  # the compute dtype, whatever grad_band's
        gy.as_strided(self.band_size, self.band_stride).copy_(grad_band)
        return gy

    def backward(self, x1: torch.Tensor, x2: torch.Tensor, grad_band: torch.Tensor, grad1: torch.Tensor | None,
                 grad2: torch.Tensor | None, scale: float) -> None:
        """Add the input gradients into ``grad1``/``grad2`` ``(B, C, *in_size)`` (``None``: not needed).

        Args:
            grad_band: the volume's gradient ``(B, *J, *U)``, any strides.
        """
        B, C, T = self.tile.batch, self.channels, self.positions
        gy = self._grad_product(x1, grad_band)
        if grad1 is not None:
            if self.window1.whole and grad1.is_contiguous():
                grad1.view(B, C, T).baddbmm_(self._x2(x2), gy.transpose(1, 2), alpha=scale)
            else:
                scatter_add(grad1, self._grad1_product(x2, gy, scale), self.window1)
        if grad2 is not None:
            scatter_add(grad2, self._grad2_product(x1, gy, scale), self.window2)

    def gradients(self, x1: torch.Tensor, x2: torch.Tensor, grad_out: torch.Tensor, need1: bool, need2: bool,
                  scale: float) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Both input gradients ``(B, C, *in_size)`` as new tensors (``None`` where not needed).

        What :meth:`backward` adds into zeroed accumulators, without them: where
        the tile's values are all of an input, the product is that input's
        gradient (input2's without the padding's entries).

        Args:
            grad_out: the volume's gradient ``(B, *patch, *out_size)``, any strides.
        """
        gy = self._grad_product(x1, grad_out)
        grad1 = grad2 = None
        if need1:
            g1 = self._grad1_product(x2, gy, scale)
            if self.window1.whole:
                grad1 = g1.view(x1.shape)
            else:
                grad1 = x1.new_zeros(x1.shape)
                scatter_add(grad1, g1, self.window1)
        if need2:
            g2 = self._grad2_product(x1, gy, scale)
            if self.inside2 is not None:
                grad2 = g2.as_strided(*self.inside2).contiguous()
            else:
                grad2 = x2.new_zeros(x2.shape)
                scatter_add(grad2, g2, self.window2)
        return grad1, grad2

    def _grad1_product(self, x2: torch.Tensor, gy: torch.Tensor, scale: float) -> torch.Tensor:
        """``(B, C, *U)``: input1's gradient at the tile's positions (a new tensor)."""
        g1 = torch.bmm(self._x2(x2), gy.transpose(1, 2))
        if scale != 1.0:
            g1.mul_(scale)
        return g1.view(self.tile.batch, self.channels, *self.tile.positions)

    def _grad2_product(self, x1: torch.Tensor, gy: torch.Tensor, scale: float) -> torch.Tensor:
        """``(B, C, *E)``: input2's gradient over the region, padding included (a new tensor)."""
        return torch.bmm(self._x1(x1, scale), gy).view(self.tile.batch, self.channels, *self.extent)


@functools.lru_cache(maxsize=256)
def one_tile(geometry: Geometry, tiling: Tiling) -> OneTile | None:
    """The :class:`OneTile` of a plan, or ``None`` unless it has one tile, one kernel offset and small buffers."""
    tiles = iter_tiles(geometry, tiling)
    offsets = kernel_offsets(geometry.kernel)
    if not isinstance(tiles, tuple) or len(tiles) != 1 or len(offsets) != 1:
        return None
    tile = tiles[0]
    if volume_index(geometry, tile) is not None:  # one tile covers the volume; checked, as volume() relies on it
        return None
    extent = region_extent(geometry, tile.positions, tile.displacements)
    T, R = math.prod(tile.positions), math.prod(extent)
    window1 = input1_window(geometry, tile, offsets[0])
    window2 = input2_window(geometry, tile, offsets[0], extent)
    if window1 is None or window2 is None or not window2.small or tile.batch * T * R > SMALL_BUFFER:
        return None
    if not (window1.small or window1.whole):
        return None
    size, stride = volume_band_layout(geometry, tile, extent, T * R, R)
    inside2 = None
    if window2.src_all:
        view = torch.empty((tile.batch, geometry.channels, *extent), device="meta")[window2.dst]
        inside2 = (tuple(view.shape), view.stride(), int(view.storage_offset()))
    return OneTile(tile, window1, window2, geometry.channels, extent, T, R, size, stride, inside2)
