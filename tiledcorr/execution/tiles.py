"""Tiles: one block of batch items x output positions x displacements, and where it lies in the volume."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass

from ..geometry import Geometry, Span, output_slice, spans
from ..planning.tiling import Tiling


@dataclass(frozen=True)
class Tile:
    """One block of work: batch items ``[b0, b1)`` and one :class:`Span` per dimension."""

    b0: int
    b1: int
    spans: tuple[Span, ...]

    @property
    def batch(self) -> int:
        return self.b1 - self.b0

    @property
    def positions(self) -> tuple[int, ...]:
        return tuple(s.count for s in self.spans)

    @property
    def displacements(self) -> tuple[int, ...]:
        return tuple(s.disp_count for s in self.spans)

    @property
    def shape(self) -> tuple[int, tuple[int, ...], tuple[int, ...]]:
        """Batch items, positions and displacements: tiles of one shape use the same buffer views."""
        return self.batch, self.positions, self.displacements


def iter_tiles(geometry: Geometry, tiling: Tiling) -> Iterator[Tile]:
    """All tiles of a plan; together they cover every output element exactly once."""
    per_dim = [
        list(spans(geometry, d, tiling.tile[d], tiling.disp_tile[d])) for d in range(geometry.ndim)
    ]
    for b0 in range(0, geometry.batch, tiling.batch_tile):
        b1 = min(geometry.batch, b0 + tiling.batch_tile)
        for combo in itertools.product(*per_dim):
            yield Tile(b0, b1, combo)


def volume_index(geometry: Geometry, tile: Tile) -> tuple[slice, ...]:
    """Index of the tile's block in a ``(B, *patch, *out_size)`` volume."""
    disp = tuple(slice(s.disp_start, s.disp_start + s.disp_count) for s in tile.spans)
    pos = tuple(output_slice(geometry, d, s) for d, s in enumerate(tile.spans))
    return (slice(tile.b0, tile.b1), *disp, *pos)


def region_extent(geometry: Geometry, tile_positions: tuple[int, ...], tile_disps: tuple[int, ...]) -> tuple[int, ...]:
    """Size of the input2 region ``E`` a tile reads, per dimension."""
    return tuple(
        geometry.lattice(d).region_extent(tile_positions[d], tile_disps[d]) for d in range(geometry.ndim)
    )



def positions_index(geometry: Geometry, tile: Tile, *lead: slice) -> tuple[slice, ...]:
    """Index of the tile's block in a ``(B, *lead, *out_size)`` tensor (a per-position result)."""
    pos = tuple(output_slice(geometry, d, s) for d, s in enumerate(tile.spans))
    return (slice(tile.b0, tile.b1), *lead, *pos)
