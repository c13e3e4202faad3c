"""The fused reductions' sinks: each folds every tile's band into a running result of size ``(B, *out_size)``."""

from __future__ import annotations

import math

import torch

from ..execution.bands import swap_band_order
from ..execution.tiles import Tile, positions_index
from ..geometry import Geometry
from ..planning.costs import SinkCost
from .grads import selection_backward_cost
from .indices import BOOL_BYTES, INDEX_BYTES, cached_tile_indices, flat_band, shift_table


class MaxSink:
    """Running maximum and its flat displacement index ("max", "argmax").

    State: ``values`` ``(B, *out_size)`` (compute dtype) and ``index``
    ``(B, *out_size)`` int64. The merge follows ``torch.max``'s NaN rule.
    """

    def __init__(self, geometry: Geometry, dtype: torch.dtype, device: torch.device) -> None:
        self.geometry, self.dtype, self.device = geometry, dtype, device
        self.values = torch.full((geometry.batch, *geometry.out_size), -math.inf, dtype=dtype, device=device)
        # An index above every real one: the first band seen always wins a tie.
        self.index = torch.full(self.values.shape, geometry.num_displacements, dtype=torch.long, device=device)
        self._tile_index: dict[tuple, torch.Tensor] = {}

    @staticmethod
    def cost(elem: int) -> SinkCost:
        # forward: the band copy; per position the tile max (elem), its local and global
        # index, and at most six bool temporaries. backward: as a top-1 selection.
        return SinkCost(band=elem, position=elem + 2 * INDEX_BYTES + 6 * BOOL_BYTES, **selection_backward_cost(elem, 1))

    def consume(self, tile: Tile, band: torch.Tensor) -> None:
        g = self.geometry
        flat = flat_band(band, g.ndim, self.dtype)
        tile_max, local = flat.max(dim=-1)  # the first maximum: the lowest index of the tile
        del flat
        index = cached_tile_indices(self._tile_index, g, tile, self.device)[local]
        del local
        best, best_index = self.values[positions_index(g, tile)], self.index[positions_index(g, tile)]
        # As torch.max: NaN is the largest value, and the first of equal values wins.
        nan, best_nan = torch.isnan(tile_max), torch.isnan(best)
        better = (tile_max > best) | (nan & ~best_nan)
        better |= ((tile_max == best) | (nan & best_nan)) & (index < best_index)
        best.copy_(torch.where(better, tile_max, best, out=tile_max))
        best_index.copy_(torch.where(better, index, best_index, out=index))

    def selection(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The maxima and their indices as a top-1 selection, both ``(B, 1, *out_size)``."""
        return self.values.unsqueeze(1), self.index.unsqueeze(1)


class TopKSink:
    """Running ``k`` largest values per position and their flat displacement indices ("topk").

    State: ``values`` ``(B, k, *out_size)`` (compute dtype), descending, and
    ``index`` ``(B, k, *out_size)`` int64; equal values are ordered by index.
    With ``nan_aware`` (the exact NaN/Inf path), NaN ranks above every
    number, as in ``torch.topk``.
    """

    def __init__(self, geometry: Geometry, dtype: torch.dtype, device: torch.device, k: int, *,
                 nan_aware: bool = False) -> None:
        self.geometry, self.dtype, self.device, self.k, self.nan_aware = geometry, dtype, device, k, nan_aware
        self.values = torch.full((geometry.batch, k, *geometry.out_size), -math.inf, dtype=dtype, device=device)
        self.index = torch.full(self.values.shape, geometry.num_displacements, dtype=torch.long, device=device)
        self._tile_index: dict[tuple, torch.Tensor] = {}

    @staticmethod
    def cost(elem: int, k: int) -> SinkCost:
        # forward: the band copy, the selection key and one bool mask; per position
        # and kept value, the tile's top values and indices and the 2k merge
        # candidates (values and int64 indices, in up to three versions).
        return SinkCost(band=2 * elem + BOOL_BYTES, position=k * (8 * elem + 12 * INDEX_BYTES), **selection_backward_cost(elem, k))

    def consume(self, tile: Tile, band: torch.Tensor) -> None:
        g, k = self.geometry, self.k
        flat = flat_band(band, g.ndim, self.dtype)  # (Bt, *U, J)
        local = _top_indices(flat, min(k, flat.shape[-1]), nan_aware=self.nan_aware)
        top = flat.gather(-1, local)
        del flat
        top_index = cached_tile_indices(self._tile_index, g, tile, self.device)[local]
        del local
        where = positions_index(g, tile, slice(None))
        best, best_index = self.values[where].movedim(1, -1), self.index[where].movedim(1, -1)
        # Merge the running top-k with the tile's: order the candidates by
        # index, then stably by value, so equal values go to the lower index.
        indices = torch.cat([best_index, top_index], dim=-1)
        by_index = indices.argsort(dim=-1)
        indices = indices.gather(-1, by_index)
        values = torch.cat([best, top], dim=-1).gather(-1, by_index)
        del by_index, top, top_index
        sorted_values, by_value = values.sort(dim=-1, descending=True, stable=True)
        best.copy_(sorted_values[..., :k])
        best_index.copy_(indices.gather(-1, by_value[..., :k]))

    def selection(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The values and their indices, both ``(B, k, *out_size)``."""
        return self.values, self.index


def _top_indices(flat: torch.Tensor, k: int, *, nan_aware: bool = False) -> torch.Tensor:
    """Indices of the ``k`` largest values along the last axis, ties to the lowest index (any order).

    ``torch.topk``'s choice among equal values is unspecified, so it only gives
    the ``k``-th largest value ``t``; the indices come from a second topk on a
    key that ranks every value above ``t`` first, then the values equal to
    ``t`` by increasing index (``-index``), then the rest (``-inf``).

    Args:
        flat: ``(..., J)``.
        nan_aware: rank NaN above every number, as ``torch.topk`` does (the
            comparisons with ``t`` alone would never select a NaN).

    Returns:
        int64 ``(..., k)``.
    """
    J = flat.shape[-1]
    t = flat.topk(k, dim=-1).values[..., -1:]
    key = torch.empty_like(flat)
    key.copy_(torch.arange(0, -J, -1, dtype=flat.dtype, device=flat.device))
    if nan_aware:
        nan, t_nan = torch.isnan(flat), torch.isnan(t)
        equal = torch.where(t_nan, nan, torch.eq(flat, t))
        greater = torch.gt(flat, t).logical_or_(nan).logical_and_(t_nan.logical_not())
    else:
        equal, greater = torch.eq(flat, t), torch.gt(flat, t)
    key.masked_fill_(equal.logical_not_(), -math.inf)
    key.masked_fill_(greater, J)
    del equal, greater
    return key.topk(k, dim=-1).indices


class SoftArgmaxSink:
    """Online softmax over displacements ("softargmax"), as in online-softmax attention.

    With ``w = value / temperature``, keeps per position the running max ``m``,
    the normaliser ``z = sum exp(w - m)`` and the weighted sums
    ``s_c = sum exp(w - m) * d_c`` of each displacement component; each band
    rescales them by ``exp(m_old - m_new)``. The expectation is ``s / z``.

    State: ``m``, ``z`` ``(B, *out_size)`` and ``s`` ``(B, N, *out_size)``, compute dtype.
    NaN and Inf propagate as in ``torch.softmax``.
    """

    def __init__(self, geometry: Geometry, dtype: torch.dtype, device: torch.device, temperature: float) -> None:
        self.geometry, self.dtype, self.device, self.temperature = geometry, dtype, device, temperature
        shape = (geometry.batch, *geometry.out_size)
        self.m = torch.full(shape, -math.inf, dtype=dtype, device=device)
        self.z = torch.zeros(shape, dtype=dtype, device=device)
        self.s = torch.zeros((geometry.batch, geometry.ndim, *geometry.out_size), dtype=dtype, device=device)
        self.shifts = shift_table(geometry, dtype, device)
        self._tile_index: dict[tuple, torch.Tensor] = {}

    @staticmethod
    def cost(elem: int, ndim: int) -> SinkCost:
        # forward: the scaled band, exponentiated in place; per position the tile
        # max, the new max, the shift (the new max, 0 where it is -inf) and its
        # mask, the rescaling factor, the tile's z and its N sums.
        # backward: the recomputed band (turned into probabilities in place) and
        # the weights; per position g.E and the N products g_c * E_c.
        return SinkCost(
            band=elem, position=(5 + ndim) * elem + BOOL_BYTES,
            backward_band=2 * elem, backward_position=(2 + ndim) * elem,
        )

    def consume(self, tile: Tile, band: torch.Tensor) -> None:
        g, N = self.geometry, self.geometry.ndim
        ordered = swap_band_order(band, N)
        w = torch.empty(ordered.shape, dtype=self.dtype, device=band.device)
        torch.div(ordered, self.temperature, out=w)
        w = w.view(*ordered.shape[: 1 + N], -1)
        m_old = self.m[positions_index(g, tile)]
        m_new = torch.maximum(m_old, w.amax(dim=-1))
        # While every value so far is -inf, subtract 0 instead (-inf - -inf is NaN):
        # the weights and the rescaling of the zero sums are then 0, as they should be.
        shift = m_new.masked_fill(m_new == -math.inf, 0.0)
        w.sub_(shift.unsqueeze(-1)).exp_()
        alpha = torch.sub(m_old, shift).exp_()
        self.z[positions_index(g, tile)].mul_(alpha).add_(w.sum(dim=-1))
        shifts = self.shifts[cached_tile_indices(self._tile_index, g, tile, self.device)]  # (J, N)
        s = self.s[positions_index(g, tile, slice(None))]
        s.mul_(alpha.unsqueeze(1)).add_(torch.matmul(w, shifts).movedim(-1, 1))
        m_old.copy_(m_new)

