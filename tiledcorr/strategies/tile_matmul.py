"""The ``tile_matmul`` strategy: one dense matmul of a tile's input1 values against its whole input2 region."""

from __future__ import annotations

import math

import numpy as np
import torch

from ..execution.bands import transpose_band, volume_band
from ..execution.context import TileContext
from ..execution.sinks import Sink
from ..execution.tiles import Tile, region_extent
from ..planning.costs import Cost, CostTerms
from ..planning.registry import Strategy, register
from ..planning.tiling import TileDims


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
