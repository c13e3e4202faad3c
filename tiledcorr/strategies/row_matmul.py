"""The ``row_matmul`` strategy: one matmul per row of output positions, against the input2 rows it reaches."""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

from ..execution.bands import scratch_elements, swap_band_order, transpose_band
from ..execution.context import TileContext
from ..execution.sinks import Sink
from ..execution.tiles import Tile, region_extent
from ..geometry import Geometry
from ..planning.costs import Cost, CostTerms
from ..planning.registry import Strategy, register
from ..planning.tiling import TileDims, positions_per_dim

#: Time factor of column tiles that are not whole vectors (measured 1.1-1.7x).
PARTIAL_VECTOR_COST = 1.5

#: Displacements along the last dimension from which the backward's band gradient goes through a scratch
#: buffer (execution.bands.transpose_band): engine backwards at patch 13-41 took 0.88-0.98x the time,
#: at patch 9 1.04-1.06x (paired rounds, 2-core AMD EPYC, 2026-12-02).
SCRATCH_FROM_DISPLACEMENTS = 13


def _band_scratch(geometry: Geometry, last_displacements: Any) -> Any:
    """Whether tiles with this many last-dimension displacements copy their band gradient through a scratch.

    ``last_displacements`` is an int (one tile) or a numpy array (the planner's tilings), and so is the answer.

    Only where the volume's rows of a tile's positions are contiguous (unit
    position steps along the last dimension; with ``dilation_patch > 1`` they
    are not, and the scratch was slower: 1.07x for FlowNetC).
    """
    return (geometry.lattice(geometry.ndim - 1).step == 1) & (last_displacements >= SCRATCH_FROM_DISPLACEMENTS)


def _row_dims(dims: TileDims) -> tuple[np.ndarray, ...]:
    """``U1, UN, J1, EN`` and the columns ``J1..J(N-1) * EN`` of each row's matmul, per tile row."""
    width = dims.E[:, -1]
    return dims.U[:, 0], dims.U[:, -1], dims.J[:, 0], width, dims.J[:, :-1].prod(1) * width


def _per_pair(rows: np.ndarray, lead_disp: np.ndarray, fn: Callable[[int, int], int]) -> np.ndarray:
    """``fn(U1, J1)`` for every tile row, computed once per distinct pair."""
    pairs, inverse = np.unique(np.stack([rows, lead_disp], 1).astype(np.int64), axis=0, return_inverse=True)
    return np.array([fn(int(r), int(j)) for r, j in pairs], dtype=np.float64)[inverse.ravel()]


@dataclass(frozen=True)
class _Rows:
    """Shapes of a :class:`RowMatmul` tile (2-D or 3-D; see there).

    Attributes:
        rows: ``U1``, positions along the first dimension (the bmm batch).
        cols: ``UN``, positions along the last dimension (the rows of each matmul).
        disps: ``J1 * ... * J(N-1)``, displacements of the leading dimensions.
        lead_disp: ``J1``, displacements along the first dimension.
        extent: ``E``, the input2 region per dimension.
        row_step: ``m1``, region rows the bmm batch advances per position.
    """

    rows: int
    cols: int
    disps: int
    lead_disp: int
    extent: tuple[int, ...]
    row_step: int

    @property
    def width(self) -> int:
        """``EN``, region points along the last dimension."""
        return self.extent[-1]

    @property
    def row_stride(self) -> int:
        """Elements between consecutive region rows of dimension 1."""
        return math.prod(self.extent[1:])

    @property
    def columns(self) -> int:
        """``N`` of each matmul: the region points one row of positions reaches."""
        return self.disps * self.width


def _rows(geometry: Geometry, positions: tuple[int, ...], displacements: tuple[int, ...]) -> _Rows:
    return _Rows(
        rows=positions[0], cols=positions[-1], disps=math.prod(displacements[:-1]), lead_disp=displacements[0],
        extent=region_extent(geometry, positions, displacements), row_step=geometry.lattice(0).region_step,
    )


@register
class RowMatmul(Strategy):
    """One matmul per row of output positions, against the input2 rows that row reaches.

    For a tile of ``U1 x UN`` positions (2-D; other dimensions in the middle
    of a volume are tiled one position at a time), row ``a`` of positions
    multiplies its ``UN x K`` input1 values by the ``K x (J1 * EN)`` block of
    the input2 region it reaches, taken as a strided view of the region (no
    copy): the batched matmul has ``U1`` items. Only the last dimension wastes
    products (``EN / JN``, against ``E / J`` over every dimension for
    :class:`TileMatmul`), so tiles can be long along the first dimension and
    narrow along the last, which keeps the region small, the matmul at full
    speed, and the waste low for large patches.
    """

    name = "row_matmul"

    def buffers(self, dims: TileDims, backward: bool) -> dict[str, np.ndarray]:
        Bt, K, T, R = dims.Bt, dims.K, dims.T, dims.R
        rows, cols, lead_disp, width, columns = _row_dims(dims)
        sizes = {"x1": Bt * K * T, "x2": Bt * K * R, "y": Bt * rows * cols * columns}
        if backward:
            sizes.update({"g1": Bt * K * T, "g2": Bt * K * R})
            # the band gradient's way into gy on CPU (execution.bands.transpose_band)
            sizes["band"] = np.where(_band_scratch(dims.geometry, dims.J[:, -1]),
                                     scratch_elements(Bt, rows, dims.U[:, 1:].prod(1), dims.J.prod(1)), 0)
            if RowMatmul.stacked_grad2(dims.geometry):
                sizes["x1_padded"] = Bt * K * (rows + 2 * (lead_disp - 1)) * cols
                before_after = _per_pair(rows, lead_disp, lambda r, j: sum(stacked_padding(r, j)))
                # _stacked_gy's buffer: rows of positions one region row longer, plus zero rows around the tile
                sizes["y"] = Bt * (rows + before_after) * (cols * lead_disp * width + width)
        return sizes

    def cost(self, terms: CostTerms) -> Cost:
        d, model, K, elem = terms.dims, terms.model, terms.K, terms.elem
        g, eff = d.geometry, model.efficiency
        rows, cols, lead_disp, width, columns = _row_dims(d)
        # U1 rows of positions (the bmm batch), each a (UN x K) @ (K x J1..J(N-1)*EN) matmul.
        Y = d.Bt * rows * cols * columns
        # The matmul's narrow dimension (UN positions) fills vectors, and each
        # row of the band is that many volume elements: column tiles that are
        # not whole vectors ran far slower than the model's flops and bytes say
        # (`python profiling/tilings.py`, development machine: a patch-31
        # backward 144 ms with 13 columns against 114 ms with 16; 4x128x96x96
        # patch 41, 871 ms with 14 against 572 ms with 16, and 8 to 32 columns
        # 1.1-1.7x the time of 16 in scratch runs). A partial last vector is
        # paid in full, and such tiles (other than the whole width) cost
        # PARTIAL_VECTOR_COST: still valid, for budgets that fit nothing wider.
        cols_eff = eff(cols) * terms.whole_vectors(cols)
        widest = positions_per_dim(g)[-1]
        partial = (cols % model.lanes(elem) != 0) & (cols < widest)
        rate = model.matmul_flops * cols_eff * eff(columns) * eff(K)
        calls = d.Bt * rows * model.gemm_overhead
        copies = (terms.gather_bytes + terms.band_bytes) / model.bandwidth
        forward = 2 * Y * K / rate + calls + copies
        # Backward: input1's gradient is one bmm like the forward; input2's is
        # one bmm over stacked rows (2-D, m1 == 1: _grad2_stacked, whose stacked
        # operand is a view of the gradient's buffer) or one bmm per leading displacement.
        if RowMatmul.stacked_grad2(g):
            # Only the window rows inside the tile are multiplied (stacked_groups).
            window_rows = _per_pair(rows, lead_disp, stacked_window_rows)
            products = d.Bt * window_rows * cols * width
            grad2_s = (2 * products * K / (model.matmul_flops * eff(lead_disp * cols) * eff(width) * eff(K))
                       + d.Bt * d.E[:, 0] * model.gemm_overhead)
            grad2_bytes = elem * d.Bt * K * (rows + 2 * (lead_disp - 1)) * cols
        else:
            grad2_s = 2 * Y * K / (model.matmul_flops * cols_eff * eff(width) * eff(K)) + lead_disp * calls
            grad2_bytes = 0.0
        backward = (
            2 * Y * K / rate + calls + grad2_s
            + (2 * terms.gather_bytes + terms.band_bytes + grad2_bytes + elem * (Y + d.Bt * K * d.R)) / model.bandwidth
        )
        # A volume's middle dimension is tiled one position at a time.
        if g.ndim > 2:
            forward = np.where((d.U[:, 1:-1] != 1).any(1), np.inf, forward)
        return Cost(forward, backward, np.where(partial, PARTIAL_VECTOR_COST, 1.0))

    @staticmethod
    def stacked_grad2(geometry: Geometry) -> bool:
        """Whether input2's gradient is one bmm per tile (2-D, rows advancing one region row each)."""
        return geometry.ndim == 2 and geometry.lattice(0).region_step == 1

    @staticmethod
    def _lhs(x1: torch.Tensor, rows: _Rows, b: int) -> torch.Tensor:
        """``A^T``, ``(U1, K, UN)``: batch item ``b``'s input1 tile, one row of positions per item (a view).

        ``x1`` is ``(Bt, kvol, C, *U)``: a gathered buffer (contiguous), or
        with one kernel offset a view of input1 itself (any strides).
        """
        s = x1.stride()
        item = x1[b]
        return item.as_strided((rows.rows, x1.shape[1] * x1.shape[2], rows.cols), (s[3], s[2], s[-1]),
                               item.storage_offset())

    @staticmethod
    def _rhs(region: torch.Tensor, rows: _Rows, b: int, first_row: int = 0, columns: int | None = None) -> torch.Tensor:
        """``(U1, K, columns)``: for each row of positions the region block it reaches (a view).

        ``region`` is ``(Bt, kvol, C, *E)``; item ``a`` starts at region row
        ``a*m1 + first_row`` and spans ``columns`` elements (default ``J1*EN``).
        """
        K, R = region.shape[1] * region.shape[2], region[b, 0, 0].numel()
        item = region[b]
        return item.as_strided(
            (rows.rows, K, rows.columns if columns is None else columns),
            (rows.row_step * rows.row_stride, R, 1),
            item.storage_offset() + first_row * rows.row_stride,
        )

    @staticmethod
    def _band(y: torch.Tensor, geometry: Geometry, tile: Tile, rows: _Rows) -> torch.Tensor:
        """From ``y`` ``(Bt, U1, UN, J1..J(N-1), EN)`` the band ``(Bt, *U, *J)`` (a view)."""
        N = geometry.ndim
        s = y.stride()
        m_last = geometry.lattice(N - 1).region_step
        lead_pos = [s[1]] + [0] * (N - 2)
        lead_disp = [rows.width * math.prod(tile.displacements[d + 1 : N - 1]) for d in range(N - 1)]
        return y.as_strided(
            (tile.batch, *tile.positions, *tile.displacements),
            (s[0], *lead_pos, s[2] + m_last, *lead_disp, 1),
            y.storage_offset(),
        )

    def forward(self, ctx: TileContext, tile: Tile, sink: Sink) -> None:
        rows = _rows(ctx.geometry, tile.positions, tile.displacements)
        in_place = ctx.input1_in_place(tile)
        x1 = ctx.gather_x1(tile) if in_place is None else in_place  # a gathered tile is scaled already
        x2 = ctx.gather_x2(tile, rows.extent)
        y = ctx.ws.view("y", tile.batch, rows.rows, rows.cols, rows.columns)
        for b in range(tile.batch):
            a, r = RowMatmul._lhs(x1, rows, b).transpose(1, 2), RowMatmul._rhs(x2, rows, b)
            if in_place is None or ctx.scale == 1.0:
                torch.bmm(a, r, out=y[b])
            else:  # beta=0: y's old contents (NaN included) are ignored
                y[b].baddbmm_(a, r, beta=0.0, alpha=ctx.scale)
        sink.consume(tile, swap_band_order(RowMatmul._band(y, ctx.geometry, tile, rows), ctx.geometry.ndim))

    def backward(self, ctx: TileContext, tile: Tile, grad_band: torch.Tensor, grad1, grad2) -> None:
        g, N = ctx.geometry, ctx.geometry.ndim
        rows = _rows(g, tile.positions, tile.displacements)
        extent = rows.extent
        stacked = RowMatmul.stacked_grad2(g) and grad2 is not None
        # The one transpose of the gradient (volume order to position-major); the
        # stacked input2 gradient multiplies a strided view of the same buffer.
        gy = RowMatmul._stacked_gy(ctx, tile, rows) if stacked else ctx.ws.zeroed_view(
            "y", tile.shape, tile.batch, rows.rows, rows.cols, rows.columns)
        scratch = None
        if gy.is_cpu and _band_scratch(g, tile.displacements[-1]):
            size = scratch_elements(tile.batch, rows.rows, math.prod(tile.positions[1:]), math.prod(tile.displacements))
            scratch = ctx.ws.view("band", int(size))
        transpose_band(RowMatmul._band(gy, g, tile, rows), swap_band_order(grad_band, N), 1 + N, scratch=scratch)
        x1 = ctx.gather_x1(tile) if grad2 is not None and not stacked else None
        x2 = ctx.gather_x2(tile, extent) if grad1 is not None else None
        K = len(ctx.offsets) * g.channels
        if grad1 is not None:
            assert x2 is not None  # gathered above exactly when grad1 is needed
            g1 = ctx.ws.view("g1", tile.batch, rows.rows, K, rows.cols)
            for b in range(tile.batch):
                torch.bmm(RowMatmul._rhs(x2, rows, b), gy[b].transpose(1, 2), out=g1[b])
            # (Bt, U1, K, UN) seen as (Bt, kvol, C, *U); middle dimensions hold one position.
            lead = [K * rows.cols] + [0] * (N - 2)
            view = g1.as_strided(
                (tile.batch, len(ctx.offsets), g.channels, *tile.positions),
                (rows.rows * K * rows.cols, g.channels * rows.cols, rows.cols, *lead, 1),
            )
            ctx.scatter_g1(grad1, tile, view)
        if stacked:
            RowMatmul._grad2_stacked(ctx, tile, gy, extent, rows, grad2)
        elif grad2 is not None:
            assert x1 is not None  # gathered above exactly when grad2 is needed and not stacked
            g2 = ctx.ws.view("g2", tile.batch, len(ctx.offsets), g.channels, *extent).zero_()
            per_row = rows.columns // rows.lead_disp  # one lead displacement's block: J2..J(N-1) x EN
            for b in range(tile.batch):
                a_t = RowMatmul._lhs(x1, rows, b)
                # Row a of positions reads region row a*m1 + j for displacement j:
                # for a fixed j the rows differ across a, so each j is one bmm.
                for j in range(rows.lead_disp):
                    target = RowMatmul._rhs(g2, rows, b, first_row=j, columns=per_row)
                    target.baddbmm_(a_t, gy[b, :, :, j * per_row : (j + 1) * per_row])
            ctx.scatter_g2(grad2, tile, g2, extent)

    @staticmethod
    def _stacked_gy(ctx: TileContext, tile: Tile, rows: _Rows) -> torch.Tensor:
        """The position-major gradient ``(Bt, U1, UN, J1*EN)`` laid out for :meth:`_grad2_stacked`.

        Rows of positions are ``UN*J1*EN + EN`` elements apart (one region row
        more than they hold) and the buffer has zero rows of positions before
        and after the tile (:func:`stacked_padding`): then the stacked operand
        of every region row is a strided view of this buffer, not a copy.
        """
        U1, UN, J1, EN = rows.rows, rows.cols, rows.lead_disp, rows.width
        before, after = stacked_padding(U1, J1)
        step = UN * J1 * EN + EN
        full = ctx.ws.zeroed_view("y", tile.shape, tile.batch, (before + U1 + after) * step)
        return full.as_strided((tile.batch, U1, UN, J1 * EN), (full.stride(0), step, J1 * EN, 1), before * step)

    @staticmethod
    def _grad2_stacked(ctx: TileContext, tile: Tile, gy: torch.Tensor, extent: tuple[int, ...], rows: _Rows,
                       grad2: torch.Tensor) -> None:
        """Input2's gradient over the region as a few bmms per batch item (2-D, ``m1 == 1``).

        Region row ``e`` receives from the ``J1`` position rows ``a = e - j``
        (displacement ``j``); stacking those rows makes it one matmul (done for
        groups of region rows over the window rows inside the tile, :func:`stacked_groups`):
        ``G2[e] (K x EW) = [X1 rows e-J1+1 .. e] (K x J1*UW) @ Z[e] (J1*UW x EW)``,
        with ``Z[e, w] = gy[e - J1 + 1 + w, :, J1 - 1 - w]`` (a ``UW x EW`` block)
        and input1's rows zero-padded by ``J1 - 1`` at both ends. With ``gy``'s
        rows of positions ``UW*J1*EW + EW`` apart (:meth:`_stacked_gy`), block
        ``w + 1`` starts ``UW`` rows of ``J1*EW`` after block ``w``, so ``Z[e]``
        is a matrix with a leading dimension: a view of ``gy``. Each product is
        computed transposed (``G2[e]^T = Z[e]^T @ X1^T``, into a ``(Bt, E1, EW, K)``
        buffer) and added into input2's gradient through a permuted view.
        """
        g = ctx.geometry
        K, (U1, UW), J1, (E1, EW) = len(ctx.offsets) * g.channels, tile.positions, rows.lead_disp, extent
        padded_rows = U1 + 2 * (J1 - 1)
        x1p = ctx.ws.zeroed_view("x1_padded", tile.shape, tile.batch, K, padded_rows, UW)
        inside = x1p.view(tile.batch, len(ctx.offsets), g.channels, padded_rows, UW)[:, :, :, J1 - 1 : J1 - 1 + U1]
        ctx.gather_x1(tile, out=inside)
        # Transposed, the matmul's wide output dimension is K rather than the narrow EW: the same flops
        # at 1.04-1.43x the rate on the benchmark shapes (scratch bmm timings), for a transposing add into
        # input2's gradient; the whole backward then took 0.91x the time at patch 31, 0.96x for FlowNetC,
        # 0.98-1.03x for the others (paired rounds of engine backwards, 2-core AMD EPYC, 2026-12-02).
        g2 = ctx.ws.view("g2", tile.batch, E1, EW, K)
        row_step, block = gy.stride(1), gy.stride(2)  # UW*J1*EW + EW, J1*EW
        for b in range(tile.batch):
            item, origin = x1p[b], gy[b].storage_offset()
            windows = item.as_strided((E1, K, J1 * UW), (UW, padded_rows * UW, 1), item.storage_offset())
            for e0, e1, w0, w1 in stacked_groups(U1, J1):
                z = gy.as_strided(
                    (e1 - e0, (w1 - w0) * UW, EW), (row_step, block, 1),
                    origin + (e0 - J1 + 1 + w0) * row_step + (J1 - 1 - w0) * EW,
                )
                torch.bmm(z.transpose(1, 2), windows[e0:e1, :, w0 * UW : w1 * UW].transpose(1, 2), out=g2[b, e0:e1])
        ctx.scatter_g2(grad2, tile, g2.view(tile.batch, E1, EW, len(ctx.offsets), g.channels).permute(0, 3, 4, 1, 2), extent)


#: Groups of region rows in the stacked input2 gradient (matmul calls per batch item).
STACKED_GROUPS = 8


@functools.lru_cache(maxsize=256)
def stacked_groups(rows: int, lead_disp: int) -> tuple[tuple[int, int, int, int], ...]:
    """``(e0, e1, w0, w1)``: region rows ``[e0, e1)`` multiply window rows ``[w0, w1)``.

    In :meth:`RowMatmul._grad2_stacked` region row ``e``'s window holds the
    position rows ``e - J1 + 1 .. e``; near the tile's edges some of them lie
    outside the tile (zero padding), and ``E1 = U1 + J1 - 1`` region rows times
    ``J1`` window rows is 1.4-2.3x the ``U1 * J1`` products that count on the
    benchmark tiles. Each group of consecutive region rows multiplies only the
    window rows any of its rows has inside the tile: with eight groups the
    excess falls to 1.15-1.25x, for eight matmul calls instead of one.

    Args:
        rows: ``U1``, position rows in the tile.
        lead_disp: ``J1``, displacements along the first dimension.
    """
    extent = rows + lead_disp - 1
    bounds = sorted({round(i * extent / STACKED_GROUPS) for i in range(STACKED_GROUPS + 1)})
    # Window row w of region row e is position row e + w - (J1 - 1): inside the
    # tile for max(0, J1-1-e) <= w < min(J1, U1+J1-1-e), both falling with e.
    return tuple(
        (e0, e1, max(0, lead_disp - e1), min(lead_disp, rows + lead_disp - 1 - e0)) for e0, e1 in zip(bounds, bounds[1:])
    )


def stacked_window_rows(rows: int, lead_disp: int) -> int:
    """Region rows times window rows the grouped stacked gradient multiplies (the planner's flop count)."""
    return sum((e1 - e0) * (w1 - w0) for e0, e1, w0, w1 in stacked_groups(rows, lead_disp))


@functools.lru_cache(maxsize=256)
def stacked_padding(rows: int, lead_disp: int) -> tuple[int, int]:
    """Zero rows of positions the stacked gradient's views reach before and after the tile.

    Window row ``w`` of region row ``e`` reads position row ``e - J1 + 1 + w``;
    the groups (:func:`stacked_groups`) keep that within a few rows of the tile.
    """
    first = min(e0 - lead_disp + 1 + w0 for e0, _, w0, _ in stacked_groups(rows, lead_disp))
    last = max(e1 - lead_disp + w1 - 1 for _, e1, _, w1 in stacked_groups(rows, lead_disp))
    return max(0, -first), max(0, last - (rows - 1))

