"""How the work is cut into tiles, and the sizes of a tile (for one tiling or many candidates at once)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..geometry import Geometry


@dataclass(frozen=True)
class Tiling:
    """How the work is cut into tiles (chosen by the planner).

    Attributes:
        strategy: name of a strategy in the registry (:mod:`tiledcorr.planning.registry`).
        batch_tile: batch items per tile.
        tile: output positions per tile along each spatial dimension.
        disp_tile: displacements per tile along each patch dimension.
    """

    strategy: str
    batch_tile: int
    tile: tuple[int, ...]
    disp_tile: tuple[int, ...]


def positions_per_dim(geometry: Geometry) -> list[int]:
    """Positions of the largest position class per dimension (at least 1): the largest useful tile."""
    return [max(1, -(-o // geometry.lattice(d).step)) for d, o in enumerate(geometry.out_size)]


class TileDims:
    """Sizes of tiles: one row per tiling, so one formula serves the engine and the planner.

    A strategy's workspace (:meth:`~tiledcorr.planning.registry.Strategy.buffers`)
    and cost model are written once, in terms of these arrays: the engine
    sizes its buffers from the single row of :meth:`of_tiling`, the planner
    scores thousands of candidate rows at once.

    Attributes (arrays of ``n`` rows, float64):
        geometry: the problem.
        Bt: batch items per tile, ``(n,)``.
        U: output positions per dimension, ``(n, N)``.
        J: displacements per dimension, ``(n, N)``.
        E: input2 region points per dimension, ``(n, N)``: ``(U - 1) * m + J``.
        T, R, Jp: ``prod(U)``, ``prod(E)``, ``prod(J)``, ``(n,)``.
        K: ``kvol * C``, the length of each sum.
    """

    def __init__(self, geometry: Geometry, batch_tile: np.ndarray, positions: np.ndarray, displacements: np.ndarray) -> None:
        N = geometry.ndim
        self.geometry = geometry
        self.Bt = np.asarray(batch_tile, dtype=np.float64).reshape(-1)
        self.U = np.asarray(positions, dtype=np.float64).reshape(-1, N)
        self.J = np.asarray(displacements, dtype=np.float64).reshape(-1, N)
        m = np.array([geometry.lattice(d).region_step for d in range(N)], dtype=np.float64)
        self.E = (self.U - 1) * m + self.J
        self.T, self.R, self.Jp = self.U.prod(1), self.E.prod(1), self.J.prod(1)
        self.K = float(geometry.kernel_volume * geometry.channels)

    @classmethod
    def of_tiling(cls, geometry: Geometry, tiling: Tiling) -> "TileDims":
        """The largest tile of a tiling (its workspace is sized for that one).

        Where the output is empty no tile runs: the batch tile is 0, so every
        buffer (each one a multiple of it) is empty, whatever the parameters.
        """
        U = [min(t, u) for t, u in zip(tiling.tile, positions_per_dim(geometry))]
        J = [min(j, P) for j, P in zip(tiling.disp_tile, geometry.patch)]
        Bt = 0 if geometry.no_tiles else min(tiling.batch_tile, geometry.batch)
        return cls(geometry, np.array([Bt]), np.array([U]), np.array([J]))

    def __len__(self) -> int:
        return len(self.Bt)


def total_elements(buffers: dict[str, np.ndarray]) -> np.ndarray:
    """Elements of all buffers together, per row."""
    return sum(buffers.values(), np.zeros(1))


def as_sizes(buffers: dict[str, np.ndarray]) -> dict[str, int]:
    """The buffer sizes of a single-row :class:`TileDims` as ints (what the engine allocates)."""
    return {name: int(round(float(np.asarray(n).reshape(-1)[0]))) for name, n in buffers.items()}
