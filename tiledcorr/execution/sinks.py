"""Where each tile's band goes (sinks), and where a backward's band gradients come from (sources)."""

from __future__ import annotations

from typing import Any, Protocol

import torch

from ..geometry import Geometry
from .tiles import Tile, volume_block


class Sink(Protocol):
    """Receives each tile's band of the cost volume, shape ``(Bt, *J, *U)``."""

    def consume(self, tile: Tile, band: torch.Tensor) -> None: ...


class OutputSink:
    """Writes each band into its block of a preallocated cost volume."""

    def __init__(self, geometry: Geometry, out: torch.Tensor) -> None:
        self.geometry, self.out = geometry, out

    def consume(self, tile: Tile, band: torch.Tensor) -> None:
        volume_block(self.out, self.geometry, tile).copy_(band)


class CaptureSink:
    """A sink that appends a copy of each band it gets to ``store``."""

    def __init__(self, store: list) -> None:
        self.store = store

    def consume(self, tile: Tile, band: torch.Tensor) -> None:
        self.store.append(band.clone())



class GradSource(Protocol):
    """Gives the gradient of each tile's band, shape ``(Bt, *J, *U)``.

    It may call ``ctx.recompute_band(tile)`` to get the tile's forward values
    (a fused reduction's backward needs them); it must return a tensor that
    does not alias the workspace.
    """

    def __call__(self, ctx: Any, tile: Tile) -> torch.Tensor: ...


def volume_grad(grad_out: torch.Tensor) -> GradSource:
    """The gradient source of a stored cost volume: a view of its block of ``grad_out``."""
    return lambda ctx, tile: volume_block(grad_out, ctx.geometry, tile)

