"""The ``shift`` strategy: one displacement at a time, an elementwise product with a shifted view of the region."""

from __future__ import annotations

import itertools
import math

import numpy as np
import torch

from ..execution.context import TileContext
from ..execution.sinks import Sink
from ..execution.tiles import Tile, region_extent
from ..geometry import Geometry
from ..planning.costs import Cost, CostTerms
from ..planning.registry import Strategy, register
from ..planning.tiling import TileDims


def _shifted(region: torch.Tensor, geometry: Geometry, tile: Tile, jj: tuple[int, ...]) -> torch.Tensor:
    """From a region ``(Bt, kvol, C, *E)`` the view ``region[..., *(a*m + jj)]``, ``(Bt, kvol, C, *U)``."""
    N = geometry.ndim
    strides = region.stride()
    offset = region.storage_offset() + sum(jj[d] * strides[3 + d] for d in range(N))
    pos_strides = [geometry.lattice(d).region_step * strides[3 + d] for d in range(N)]
    return region.as_strided((*region.shape[:3], *tile.positions), (*strides[:3], *pos_strides), offset)


@register
class Shift(Strategy):
    """One displacement at a time: multiply the input1 tile by a shifted view of the region.

    Does exactly the needed products (no waste) but at elementwise speed, not
    matmul speed; it needs less workspace than :class:`TileMatmul` for the same
    tile and wins when there are few channels.
    """

    name = "shift"

    def buffers(self, dims: TileDims, backward: bool) -> dict[str, np.ndarray]:
        Bt, K, T, R = dims.Bt, dims.K, dims.T, dims.R
        # The backward accumulates g1 in "prod": a fused reduction's backward
        # recomputes the band (forward, using "prod") before g1 is written.
        sizes = {"x1": Bt * K * T, "x2": Bt * K * R, "band": Bt * dims.Jp * T, "prod": Bt * K * T}
        if backward:
            sizes["g2"] = Bt * K * R
        return sizes

    def cost(self, terms: CostTerms) -> Cost:
        d, model = terms.dims, terms.model
        per_displacement = terms.ew_pass() + model.copy_overhead
        forward = d.Jp * per_displacement + (terms.gather_bytes + terms.band_bytes) / model.bandwidth
        backward = 2 * d.Jp * per_displacement + (2 * terms.gather_bytes + terms.band_bytes) / model.bandwidth
        return Cost(forward, backward)

    def forward(self, ctx: TileContext, tile: Tile, sink: Sink) -> None:
        g, N = ctx.geometry, ctx.geometry.ndim
        extent = region_extent(g, tile.positions, tile.displacements)
        x1 = ctx.gather_x1(tile)
        x2 = ctx.gather_x2(tile, extent)
        prod = ctx.ws.view("prod", *x1.shape)
        T, J = math.prod(tile.positions), math.prod(tile.displacements)
        band = ctx.ws.view("band", J, tile.batch, T)
        for k, jj in enumerate(itertools.product(*(range(j) for j in tile.displacements))):
            torch.mul(x1, _shifted(x2, g, tile, jj), out=prod)
            torch.sum(prod.view(tile.batch, -1, T), dim=1, out=band[k])
        volume = band.view(*tile.displacements, tile.batch, *tile.positions)
        sink.consume(tile, volume.permute(N, *range(N), *range(N + 1, 2 * N + 1)))

    def backward(self, ctx: TileContext, tile: Tile, grad_band: torch.Tensor, grad1, grad2) -> None:
        g = ctx.geometry
        extent = region_extent(g, tile.positions, tile.displacements)
        J = math.prod(tile.displacements)
        band = ctx.ws.view("band", tile.batch, *tile.displacements, *tile.positions)
        band.copy_(grad_band)
        band = band.view(tile.batch, 1, 1, J, *tile.positions)
        x1 = ctx.gather_x1(tile) if grad2 is not None else None
        x2 = ctx.gather_x2(tile, extent) if grad1 is not None else None
        g1 = ctx.ws.view("prod", tile.batch, len(ctx.offsets), g.channels, *tile.positions).zero_() if grad1 is not None else None
        g2 = ctx.ws.view("g2", tile.batch, len(ctx.offsets), g.channels, *extent).zero_() if grad2 is not None else None
        for k, jj in enumerate(itertools.product(*(range(j) for j in tile.displacements))):
            weight = band[:, :, :, k]
            # x2 is gathered exactly when g1 is needed, x1 when g2 is.
            if g1 is not None and x2 is not None:
                g1.addcmul_(_shifted(x2, g, tile, jj), weight)
            if g2 is not None and x1 is not None:
                _shifted(g2, g, tile, jj).addcmul_(x1, weight)
        if g1 is not None:
            ctx.scatter_g1(grad1, tile, g1)
        if g2 is not None:
            ctx.scatter_g2(grad2, tile, g2, extent)
