"""The planner's cost model: device speeds, the terms every strategy's model shares, a sink's temporaries.

Each strategy's own model (:meth:`tiledcorr.planning.registry.Strategy.cost`)
predicts the seconds of one tile from :class:`CostTerms`; the planner adds the
per-tile overheads and ranks. The figures only need to rank tilings of one
problem against each other, not to predict wall time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, TypeVar

import numpy as np

from ..geometry import Geometry
from .tiling import TileDims

#: A tile size: one per candidate tiling (an array), or one scalar (a sum's length ``K``).
_Size = TypeVar("_Size", np.ndarray, float)


@dataclass(frozen=True)
class DeviceModel:
    """Rough speeds of one device type, used only to rank tilings against each other."""

    matmul_flops: float  # FLOP/s of a large matmul
    bandwidth: float  # bytes/s of strided copies
    tile_overhead: float  # seconds of Python and launch overhead per tile
    copy_overhead: float  # seconds per gather/scatter call
    half_size: float  # matmul dimension at which efficiency is 50%
    gemm_overhead: float  # seconds per matmul of a batched matmul (torch loops over the batch)
    vector_bytes: int  # bytes per SIMD vector / cache line; tiles' last dimension runs best in whole ones (0: no such effect)

    def efficiency(self, size: _Size) -> _Size:
        """Matmul efficiency along one dimension of ``size`` elements."""
        return size / (size + self.half_size)

    def lanes(self, elem: int) -> int:
        """Elements per SIMD vector (1: no vector-width effect)."""
        return max(1, self.vector_bytes // elem)


DEVICE_MODELS = {
    "cpu": DeviceModel(matmul_flops=1.0e11, bandwidth=4e9, tile_overhead=40e-6, copy_overhead=8e-6, half_size=8,
                       gemm_overhead=3e-6, vector_bytes=64),
    "cuda": DeviceModel(matmul_flops=4.0e13, bandwidth=1.5e12, tile_overhead=60e-6, copy_overhead=10e-6, half_size=64,
                        gemm_overhead=0.0, vector_bytes=0),
}


def device_model(device_type: str) -> DeviceModel:
    """The model of a device type (the CPU's for any other)."""
    return DEVICE_MODELS.get(device_type, DEVICE_MODELS["cpu"])


class CostTerms:
    """What every strategy's cost model starts from, for a set of candidate tiles.

    Attributes:
        dims: the candidates' tile sizes.
        model: the device's speeds; ``elem`` the compute dtype's bytes per element.
        K: the length of each sum, at least 1 (C = 0: empty sums, no work).
        gather_bytes: bytes one gather of both inputs' tiles moves (read and write).
        band_bytes: bytes of one copy of the tile's band.
    """

    def __init__(self, dims: TileDims, model: DeviceModel, elem: int) -> None:
        self.dims, self.model, self.elem = dims, model, elem
        self.K = max(1.0, dims.K)
        self.gather_bytes = 2 * elem * dims.Bt * self.K * (dims.T + dims.R)
        self.band_bytes = 2 * elem * dims.Bt * dims.T * dims.Jp

    @property
    def geometry(self) -> Geometry:
        return self.dims.geometry

    def whole_vectors(self, n: np.ndarray) -> np.ndarray:
        """Share of useful lanes when a partial last vector is paid in full."""
        lanes = self.model.lanes(self.elem)
        return n / (np.ceil(n / lanes) * lanes)

    def ew_pass(self) -> np.ndarray:
        """Seconds of one elementwise pass over an input1 tile (the shift strategy's unit)."""
        d = self.dims
        return 4 * self.elem * d.Bt * self.K * d.T / self.model.bandwidth + self.model.copy_overhead


class Cost(NamedTuple):
    """A strategy's predicted seconds per tile, forward and backward (``inf``: cannot run this tile).

    ``factor`` multiplies the tile's whole time, overheads included (a
    penalty the flops and bytes do not show).
    """

    forward: np.ndarray
    backward: np.ndarray
    factor: np.ndarray | float = 1.0


@dataclass(frozen=True)
class SinkCost:
    """Bytes a sink holds per tile besides the engine's workspace (a fused reduction's temporaries).

    For a tile of ``Bt`` batch items, ``T`` positions and ``J`` displacements,
    the forward holds ``band * Bt*J*T + position * Bt*T`` bytes, and the
    backward ``backward_band * Bt*J*T + backward_position * Bt*T`` while it
    computes a band's gradient. Zero for the stored cost volume.
    """

    band: int = 0
    position: int = 0
    backward_band: int = 0
    backward_position: int = 0

    def bytes(self, band_elements, position_elements, *, backward: bool):
        """The bytes for ``band_elements = Bt*J*T`` and ``position_elements = Bt*T`` (ints or arrays)."""
        if backward:
            return self.backward_band * band_elements + self.backward_position * position_elements
        return self.band * band_elements + self.position * position_elements

    @property
    def is_zero(self) -> bool:
        """True for the stored cost volume (no fused reduction)."""
        return self == SinkCost()
