"""Tiles: one block of batch items x output positions x displacements, and where it lies in the volume."""

from __future__ import annotations

import functools
import itertools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch

from ..geometry import Geometry, Span, count_spans, output_slice, spans
from ..memo import cached, cached_hash
from ..planning.tiling import Tiling


@dataclass(frozen=True)
class Tile:
    """One block of work: batch items ``[b0, b1)`` and one :class:`Span` per dimension."""

    b0: int
    b1: int
    spans: tuple[Span, ...]

    # Tiles key the caches of their index arithmetic (gather windows, volume
    # indices): their sizes and hash are computed once.
    @cached
    def batch(self) -> int:
        return self.b1 - self.b0

    @cached
    def positions(self) -> tuple[int, ...]:
        return tuple(s.count for s in self.spans)

    @cached
    def displacements(self) -> tuple[int, ...]:
        return tuple(s.disp_count for s in self.spans)

    def __hash__(self) -> int:
        return cached_hash(self, _fields)

    @cached
    def shape(self) -> tuple[int, tuple[int, ...], tuple[int, ...]]:
        """Batch items, positions and displacements: tiles of one shape use the same buffer views."""
        return self.batch, self.positions, self.displacements


def _fields(tile: Tile) -> tuple:
    return tile.b0, tile.b1, tile.spans


#: Plans with at most this many tiles keep their tiles (and so the caches keyed by them) between calls.
CACHED_TILES = 4096


def iter_tiles(geometry: Geometry, tiling: Tiling) -> Iterable[Tile]:
    """All tiles of a plan; together they cover every output element exactly once.

    The same :class:`Tile` objects each call for plans of up to
    :data:`CACHED_TILES` tiles (a tuple), generated afresh for larger ones.
    """
    tiles = _cached_tiles(geometry, tiling)
    return _generate_tiles(geometry, tiling) if tiles is None else tiles


@functools.lru_cache(maxsize=256)
def _cached_tiles(geometry: Geometry, tiling: Tiling) -> tuple[Tile, ...] | None:
    count = -(-geometry.batch // tiling.batch_tile)
    for d in range(geometry.ndim):
        count *= count_spans(geometry, d, tiling.tile[d], tiling.disp_tile[d])
    return tuple(_generate_tiles(geometry, tiling)) if count <= CACHED_TILES else None


def _generate_tiles(geometry: Geometry, tiling: Tiling) -> Iterator[Tile]:
    per_dim = [
        list(spans(geometry, d, tiling.tile[d], tiling.disp_tile[d])) for d in range(geometry.ndim)
    ]
    for b0 in range(0, geometry.batch, tiling.batch_tile):
        b1 = min(geometry.batch, b0 + tiling.batch_tile)
        for combo in itertools.product(*per_dim):
            yield Tile(b0, b1, combo)


@functools.lru_cache(maxsize=8192)
def volume_index(geometry: Geometry, tile: Tile) -> tuple[slice, ...] | None:
    """Index of the tile's block in a ``(B, *patch, *out_size)`` volume; None where it is the whole volume.

    A plan of one tile (every small call) then uses the volume itself, not a view of all of it.
    """
    whole = (tile.b0, tile.b1) == (0, geometry.batch) and all(
        (s.disp_start, s.disp_count, s.residue, s.start, s.count) == (0, P, 0, 0, o)
        for s, P, o in zip(tile.spans, geometry.patch, geometry.out_size))
    if whole:
        return None
    disp = tuple(slice(s.disp_start, s.disp_start + s.disp_count) for s in tile.spans)
    pos = tuple(output_slice(geometry, d, s) for d, s in enumerate(tile.spans))
    return (slice(tile.b0, tile.b1), *disp, *pos)


def volume_block(volume: torch.Tensor, geometry: Geometry, tile: Tile) -> torch.Tensor:
    """The tile's block of ``volume`` ``(B, *patch, *out_size)`` (a view, or the volume itself)."""
    index = volume_index(geometry, tile)
    return volume if index is None else volume[index]


@functools.lru_cache(maxsize=4096)
def region_extent(geometry: Geometry, tile_positions: tuple[int, ...], tile_disps: tuple[int, ...]) -> tuple[int, ...]:
    """Size of the input2 region ``E`` a tile reads, per dimension."""
    return tuple(
        geometry.lattice(d).region_extent(tile_positions[d], tile_disps[d]) for d in range(geometry.ndim)
    )



def positions_index(geometry: Geometry, tile: Tile, *lead: slice) -> tuple[slice, ...]:
    """Index of the tile's block in a ``(B, *lead, *out_size)`` tensor (a per-position result)."""
    pos = tuple(output_slice(geometry, d, s) for d, s in enumerate(tile.spans))
    return (slice(tile.b0, tile.b1), *lead, *pos)
