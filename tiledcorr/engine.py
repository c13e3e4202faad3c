"""Executes a plan: the tile loop, the strategies and where their results go.

One tile is a block of batch items x output positions x displacements (see
:mod:`tiledcorr.geometry`). For each tile a strategy gathers

* ``X1``: input1 at the tile's positions, shape ``(Bt, kvol, C, *U)``, and
* ``X2``: the dense input2 region the tile reaches, ``(Bt, kvol, C, *E)``,

into preallocated buffers (zeros where the implicit padding lies), computes
the tile's band of the cost volume, shape ``(Bt, *J, *U)``, and hands it to a
sink: :class:`OutputSink` writes it into the cost volume; the fused
reductions of :mod:`tiledcorr.reduce` fold it into a running result. The
backward walks the same tiles and scatters its products into the gradients.
Nothing ever holds more than one tile, so the workspace is what the planner
predicts, whatever the image and patch sizes.
"""

from __future__ import annotations

import functools
import itertools
import math
from dataclasses import dataclass
from collections.abc import Hashable, Iterator
from typing import Protocol

import torch

from . import hugepages
from .checks import show
from .errors import ArgumentValueError
from .geometry import Geometry, Span, clip, input1_start, input1_step, input2_start, output_slice, spans

_HALF_DTYPES = (torch.float16, torch.bfloat16)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype sums are accumulated in: float32 for half types, else ``dtype``."""
    return torch.float32 if dtype in _HALF_DTYPES else dtype


@dataclass(frozen=True)
class Tiling:
    """How the work is cut into tiles (chosen by the planner).

    Attributes:
        strategy: name in :data:`STRATEGIES`.
        batch_tile: batch items per tile.
        tile: output positions per tile along each spatial dimension.
        disp_tile: displacements per tile along each patch dimension.
    """

    strategy: str
    batch_tile: int
    tile: tuple[int, ...]
    disp_tile: tuple[int, ...]


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


# --------------------------------------------------------------------------- gather / scatter


def _lattice_slices(in_size, starts, steps, counts) -> tuple[list[slice], list[slice]] | None:
    """Source and buffer slices of the in-bounds part of a lattice; None if it is empty."""
    src, dst = [], []
    for n, start, step, count in zip(in_size, starts, steps, counts):
        lo, hi = clip(start, step, count, n)
        if hi <= lo:
            return None
        first = start + step * lo
        src.append(slice(first, first + step * (hi - lo - 1) + 1, step))
        dst.append(slice(lo, hi))
    return src, dst


def _zero_margins(buffer: torch.Tensor, inside: list[slice]) -> None:
    """Zero the parts of ``buffer`` (``(Bt, C, *counts)``) outside the ``inside`` box.

    Only the margins are written: zeroing the whole buffer at every border
    tile cost as much as the copy itself.
    """
    for d, s in enumerate(inside):
        for margin in (slice(0, s.start), slice(s.stop, buffer.shape[2 + d])):
            if margin.stop > margin.start:
                index = [slice(None)] * buffer.dim()
                index[2 + d] = margin
                buffer[tuple(index)].zero_()


def gather(source: torch.Tensor, buffer: torch.Tensor, tile: Tile, starts, steps, counts) -> None:
    """Copy ``source[b, c, start + step*n]`` into ``buffer[b, c, n]``; zeros out of bounds.

    Args:
        source: an input, shape ``(B, C, *in_size)``.
        buffer: shape ``(Bt, C, *counts)``.
    """
    found = _lattice_slices(source.shape[2:], starts, steps, counts)
    if found is None:
        buffer.zero_()
        return
    src, dst = found
    _zero_margins(buffer, dst)
    buffer[(slice(None), slice(None), *dst)].copy_(source[(slice(tile.b0, tile.b1), slice(None), *src)])


def scatter_add(target: torch.Tensor, buffer: torch.Tensor, tile: Tile, starts, steps, counts) -> None:
    """The adjoint of :func:`gather`: ``target[b, c, start + step*n] += buffer[b, c, n]``."""
    found = _lattice_slices(target.shape[2:], starts, steps, counts)
    if found is None:
        return
    src, dst = found
    target[(slice(tile.b0, tile.b1), slice(None), *src)].add_(buffer[(slice(None), slice(None), *dst)])


def _input1_lattice(geometry: Geometry, tile: Tile, offset: tuple[int, ...]):
    starts = [input1_start(geometry, d, s, offset[d]) for d, s in enumerate(tile.spans)]
    steps = [input1_step(geometry, d) for d in range(geometry.ndim)]
    return starts, steps, tile.positions


def _input2_lattice(geometry: Geometry, tile: Tile, offset: tuple[int, ...], extent):
    starts = [input2_start(geometry, d, s, offset[d]) for d, s in enumerate(tile.spans)]
    return starts, list(geometry.dilation_patch), extent


# --------------------------------------------------------------------------- workspace


class Workspace:
    """Buffers allocated once per call and viewed at each tile's size.

    Reusing them avoids an allocation (and, on CPU, fresh page faults) per tile
    and makes the peak exactly the sum of the buffer sizes the planner predicts.
    """

    def __init__(self, sizes: dict[str, int], dtype: torch.dtype, device: torch.device) -> None:
        self._flat = {name: torch.empty(n, dtype=dtype, device=device) for name, n in sizes.items() if n > 0}
        for buffer in self._flat.values():
            hugepages.advise(buffer)
        self._zeroed_for: dict[str, Hashable] = {}

    def view(self, name: str, *shape: int) -> torch.Tensor:
        """The buffer's first ``prod(shape)`` elements; the caller may write any of them."""
        self._zeroed_for.pop(name, None)
        return self._prefix(name, shape)

    def _prefix(self, name: str, shape: tuple[int, ...]) -> torch.Tensor:
        return self._flat[name][: math.prod(shape)].view(shape)

    def zeroed_view(self, name: str, key: Hashable, *shape: int) -> torch.Tensor:
        """Like :meth:`view`, but zero wherever the caller does not write.

        The caller promises to write the same entries every time it passes the
        same ``key`` (a band of a tile of the same shape). The buffer is then
        zeroed only when the key changes or a plain :meth:`view` may have
        written it since, not at every tile: for the backward's band-shaped
        buffers the zeroing cost as much as a third of the band copies.
        """
        buf = self._prefix(name, shape)
        if self._zeroed_for.get(name) != key:
            buf.zero_()
            self._zeroed_for[name] = key
        return buf

    def release(self) -> None:
        self._flat.clear()
        self._zeroed_for.clear()


def workspace_elements(geometry: Geometry, tiling: Tiling, *, backward: bool) -> dict[str, int]:
    """Elements of each workspace buffer a strategy needs (the planner's memory model)."""
    return STRATEGIES[tiling.strategy].buffers(geometry, tiling, backward)


def _tile_dims(geometry: Geometry, tiling: Tiling) -> tuple[int, int, int, int, int]:
    """(Bt, K, T, Rg, J) of the largest tile: batch, kvol*C, positions, region, displacements."""
    U, J = _largest_tile(geometry, tiling)
    E = region_extent(geometry, U, J)
    Bt = min(tiling.batch_tile, max(geometry.batch, 1))
    return Bt, geometry.kernel_volume * geometry.channels, math.prod(U), math.prod(E), math.prod(J)


# --------------------------------------------------------------------------- strategies


class Sink(Protocol):
    """Receives each tile's band of the cost volume, shape ``(Bt, *J, *U)``."""

    def consume(self, tile: Tile, band: torch.Tensor) -> None: ...


class OutputSink:
    """Writes each band into its block of a preallocated cost volume."""

    def __init__(self, geometry: Geometry, out: torch.Tensor) -> None:
        self.geometry, self.out = geometry, out

    def consume(self, tile: Tile, band: torch.Tensor) -> None:
        self.out[volume_index(self.geometry, tile)].copy_(band)


class CaptureSink:
    """A sink that appends a copy of each band it gets to ``store``."""

    def __init__(self, store: list) -> None:
        self.store = store

    def consume(self, tile: Tile, band: torch.Tensor) -> None:
        self.store.append(band.clone())


class _Context:
    """What a strategy needs for one call: inputs, geometry, workspace, scale."""

    def __init__(self, geometry: Geometry, x1: torch.Tensor, x2: torch.Tensor, ws: Workspace, scale: float, strategy: type) -> None:
        self.geometry, self.x1, self.x2, self.ws, self.scale = geometry, x1, x2, ws, scale
        self.strategy = strategy
        self.offsets = list(itertools.product(*(range(k) for k in geometry.kernel)))

    def recompute_band(self, tile: Tile) -> torch.Tensor:
        """The tile's forward values ``(Bt, *J, *U)`` as a new tensor (for backward passes).

        Uses the forward's workspace buffers, so call it before the backward
        writes into them.
        """
        captured: list[torch.Tensor] = []
        self.strategy.forward(self, tile, CaptureSink(captured))
        return captured[0]

    def gather_x1(self, tile: Tile, out: torch.Tensor | None = None) -> torch.Tensor:
        """``(Bt, kvol, C, *U)`` input1 values at the tile's positions, times the scale.

        Written into the workspace's ``x1`` buffer, or into ``out`` (any strides).
        """
        g = self.geometry
        buf = self.ws.view("x1", tile.batch, len(self.offsets), g.channels, *tile.positions) if out is None else out
        for k, offset in enumerate(self.offsets):
            gather(self.x1, buf[:, k], tile, *_input1_lattice(g, tile, offset))
        if self.scale != 1.0:
            buf.mul_(self.scale)
        return buf

    def gather_x2(self, tile: Tile, extent) -> torch.Tensor:
        """``(Bt, kvol, C, *E)`` the dense input2 region the tile reaches."""
        g = self.geometry
        buf = self.ws.view("x2", tile.batch, len(self.offsets), g.channels, *extent)
        for k, offset in enumerate(self.offsets):
            gather(self.x2, buf[:, k], tile, *_input2_lattice(g, tile, offset, extent))
        return buf

    def scatter_g1(self, grad1: torch.Tensor, tile: Tile, buf: torch.Tensor) -> None:
        if self.scale != 1.0:
            buf.mul_(self.scale)
        for k, offset in enumerate(self.offsets):
            scatter_add(grad1, buf[:, k], tile, *_input1_lattice(self.geometry, tile, offset))

    def scatter_g2(self, grad2: torch.Tensor, tile: Tile, buf: torch.Tensor, extent) -> None:
        """Add ``buf`` ``(Bt, kvol, C, *E)`` into ``grad2`` over the tile's region.

        No scaling here: ``buf`` is a product with ``X1``, which was gathered scaled.
        """
        for k, offset in enumerate(self.offsets):
            scatter_add(grad2, buf[:, k], tile, *_input2_lattice(self.geometry, tile, offset, extent))


def _y_band(y: torch.Tensor, geometry: Geometry, tile: Tile) -> torch.Tensor:
    """From ``y`` of shape ``(Bt, *U, *E)`` the band ``(Bt, *U, *J)``: ``y[b, *a, *(a*m + jj)]``."""
    N = geometry.ndim
    strides = y.stride()
    pos_strides = [strides[1 + d] + geometry.lattice(d).region_step * strides[1 + N + d] for d in range(N)]
    return y.as_strided(
        (tile.batch, *tile.positions, *tile.displacements),
        (strides[0], *pos_strides, *strides[1 + N :]),
        y.storage_offset(),
    )


def swap_band_order(band: torch.Tensor, ndim: int) -> torch.Tensor:
    """``(Bt, *U, *J)`` <-> ``(Bt, *J, *U)``: tile order to volume order and back (a permuted view)."""
    return band.permute(0, *range(1 + ndim, 1 + 2 * ndim), *range(1, 1 + ndim))


#: Elements per thread below which PyTorch runs an elementwise CPU kernel on one thread.
_CPU_GRAIN = 32768


def transpose_band(dst: torch.Tensor, src: torch.Tensor, dim: int) -> None:
    """``dst.copy_(src)`` for a band that changes between volume and position-major order.

    PyTorch's copy walks the destination's layout; into a position-major band
    it reads the displacement-major source once per position across every
    displacement, a working set of thousands of cache lines and pages spread
    over the volume (3.3-3.9 ns per element on the development machine). On
    CPU this copies a few displacements along ``dim`` per call instead, which
    keeps that set to a few dozen (1.7-1.8 ns), each call still big enough for
    every thread.
    """
    n = dst.shape[dim]
    if dst.device.type != "cpu" or n <= 1:
        dst.copy_(src)
        return
    per_index = dst.numel() // n
    chunk = max(1, -(-_CPU_GRAIN * torch.get_num_threads() // max(per_index, 1)))
    for start in range(0, n, chunk):
        length = min(chunk, n - start)
        dst.narrow(dim, start, length).copy_(src.narrow(dim, start, length))


class TileMatmul:
    """One dense matmul of the input1 tile against its whole input2 region.

    ``Y = X1^T @ X2`` of shape ``(Bt, T, R)`` holds every product the tile
    needs plus some it does not (``R`` > ``J`` per position); the band is taken
    out of ``Y`` as a strided view, without a copy. Fast when the tile is large
    enough for matmul to run near its peak and the region not much larger than
    the displacements.
    """

    name = "tile_matmul"

    @staticmethod
    def buffers(geometry: Geometry, tiling: Tiling, backward: bool) -> dict[str, int]:
        Bt, K, T, R, _J = _tile_dims(geometry, tiling)
        sizes = {"x1": Bt * K * T, "x2": Bt * K * R, "y": Bt * T * R}
        if backward:
            sizes.update({"g1": Bt * K * T, "g2": Bt * K * R})
        return sizes

    @staticmethod
    def forward(ctx: _Context, tile: Tile, sink: Sink) -> None:
        g, N = ctx.geometry, ctx.geometry.ndim
        extent = region_extent(g, tile.positions, tile.displacements)
        T, R = math.prod(tile.positions), math.prod(extent)
        x1 = ctx.gather_x1(tile).view(tile.batch, -1, T)
        x2 = ctx.gather_x2(tile, extent).view(tile.batch, -1, R)
        y = ctx.ws.view("y", tile.batch, T, R)
        torch.bmm(x1.transpose(1, 2), x2, out=y)
        band = _y_band(y.view(tile.batch, *tile.positions, *extent), g, tile)
        sink.consume(tile, swap_band_order(band, N))

    @staticmethod
    def backward(ctx: _Context, tile: Tile, grad_band: torch.Tensor, grad1, grad2) -> None:
        g, N = ctx.geometry, ctx.geometry.ndim
        extent = region_extent(g, tile.positions, tile.displacements)
        T, R = math.prod(tile.positions), math.prod(extent)
        gy = ctx.ws.zeroed_view("y", tile.shape, tile.batch, T, R)
        band = _y_band(gy.view(tile.batch, *tile.positions, *extent), g, tile)
        transpose_band(band, swap_band_order(grad_band, N), 1 + N)
        if grad1 is not None:
            x2 = ctx.gather_x2(tile, extent).view(tile.batch, -1, R)
            g1 = ctx.ws.view("g1", tile.batch, len(ctx.offsets), g.channels, *tile.positions)
            torch.bmm(x2, gy.transpose(1, 2), out=g1.view(tile.batch, -1, T))
            ctx.scatter_g1(grad1, tile, g1)
        if grad2 is not None:
            x1 = ctx.gather_x1(tile).view(tile.batch, -1, T)
            g2 = ctx.ws.view("g2", tile.batch, len(ctx.offsets), g.channels, *extent)
            torch.bmm(x1, gy, out=g2.view(tile.batch, -1, R))
            ctx.scatter_g2(grad2, tile, g2, extent)


def _shifted(region: torch.Tensor, geometry: Geometry, tile: Tile, jj: tuple[int, ...]) -> torch.Tensor:
    """From a region ``(Bt, kvol, C, *E)`` the view ``region[..., *(a*m + jj)]``, ``(Bt, kvol, C, *U)``."""
    N = geometry.ndim
    strides = region.stride()
    offset = region.storage_offset() + sum(jj[d] * strides[3 + d] for d in range(N))
    pos_strides = [geometry.lattice(d).region_step * strides[3 + d] for d in range(N)]
    return region.as_strided((*region.shape[:3], *tile.positions), (*strides[:3], *pos_strides), offset)


class Shift:
    """One displacement at a time: multiply the input1 tile by a shifted view of the region.

    Does exactly the needed products (no waste) but at elementwise speed, not
    matmul speed; it needs less workspace than :class:`TileMatmul` for the same
    tile and wins when there are few channels.
    """

    name = "shift"

    @staticmethod
    def buffers(geometry: Geometry, tiling: Tiling, backward: bool) -> dict[str, int]:
        Bt, K, T, R, J = _tile_dims(geometry, tiling)
        # The backward accumulates g1 in "prod": a fused reduction's backward
        # recomputes the band (forward, using "prod") before g1 is written.
        sizes = {"x1": Bt * K * T, "x2": Bt * K * R, "band": Bt * J * T, "prod": Bt * K * T}
        if backward:
            sizes["g2"] = Bt * K * R
        return sizes

    @staticmethod
    def forward(ctx: _Context, tile: Tile, sink: Sink) -> None:
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

    @staticmethod
    def backward(ctx: _Context, tile: Tile, grad_band: torch.Tensor, grad1, grad2) -> None:
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
            if g1 is not None:
                g1.addcmul_(_shifted(x2, g, tile, jj), weight)
            if g2 is not None:
                _shifted(g2, g, tile, jj).addcmul_(x1, weight)
        if g1 is not None:
            ctx.scatter_g1(grad1, tile, g1)
        if g2 is not None:
            ctx.scatter_g2(grad2, tile, g2, extent)


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


class RowMatmul:
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

    @staticmethod
    def buffers(geometry: Geometry, tiling: Tiling, backward: bool) -> dict[str, int]:
        Bt, K, T, R, _J = _tile_dims(geometry, tiling)
        rows = _rows(geometry, *_largest_tile(geometry, tiling))
        sizes = {"x1": Bt * K * T, "x2": Bt * K * R, "y": Bt * rows.rows * rows.cols * rows.columns}
        if backward:
            sizes.update({"g1": Bt * K * T, "g2": Bt * K * R})
            if RowMatmul.stacked_grad2(geometry):
                sizes["x1_padded"] = Bt * K * (rows.rows + 2 * (rows.lead_disp - 1)) * rows.cols
                sizes["y"] = Bt * stacked_gradient_elements(rows.rows, rows.lead_disp, rows.cols, rows.width)
        return sizes

    @staticmethod
    def stacked_grad2(geometry: Geometry) -> bool:
        """Whether input2's gradient is one bmm per tile (2-D, rows advancing one region row each)."""
        return geometry.ndim == 2 and geometry.lattice(0).region_step == 1

    @staticmethod
    def _lhs(x1: torch.Tensor, rows: _Rows, b: int) -> torch.Tensor:
        """``A^T``, ``(U1, K, UN)``: batch item ``b``'s input1 tile, one row of positions per item (a view)."""
        K, T = x1.shape[1] * x1.shape[2], x1[b, 0, 0].numel()
        return x1[b].as_strided((rows.rows, K, rows.cols), (rows.cols, T, 1))

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

    @staticmethod
    def forward(ctx: _Context, tile: Tile, sink: Sink) -> None:
        rows = _rows(ctx.geometry, tile.positions, tile.displacements)
        x1, x2 = ctx.gather_x1(tile), ctx.gather_x2(tile, rows.extent)
        y = ctx.ws.view("y", tile.batch, rows.rows, rows.cols, rows.columns)
        for b in range(tile.batch):
            torch.bmm(RowMatmul._lhs(x1, rows, b).transpose(1, 2), RowMatmul._rhs(x2, rows, b), out=y[b])
        sink.consume(tile, swap_band_order(RowMatmul._band(y, ctx.geometry, tile, rows), ctx.geometry.ndim))

    @staticmethod
    def backward(ctx: _Context, tile: Tile, grad_band: torch.Tensor, grad1, grad2) -> None:
        g, N = ctx.geometry, ctx.geometry.ndim
        rows = _rows(g, tile.positions, tile.displacements)
        extent = rows.extent
        stacked = RowMatmul.stacked_grad2(g) and grad2 is not None
        # The one transpose of the gradient (volume order to position-major); the
        # stacked input2 gradient multiplies a strided view of the same buffer.
        gy = RowMatmul._stacked_gy(ctx, tile, rows) if stacked else ctx.ws.zeroed_view(
            "y", tile.shape, tile.batch, rows.rows, rows.cols, rows.columns)
        transpose_band(RowMatmul._band(gy, g, tile, rows), swap_band_order(grad_band, N), 1 + N)
        x1 = ctx.gather_x1(tile) if grad2 is not None and not stacked else None
        x2 = ctx.gather_x2(tile, extent) if grad1 is not None else None
        K = len(ctx.offsets) * g.channels
        if grad1 is not None:
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
    def _stacked_gy(ctx: _Context, tile: Tile, rows: _Rows) -> torch.Tensor:
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
    def _grad2_stacked(ctx: _Context, tile: Tile, gy: torch.Tensor, extent: tuple[int, ...], rows: _Rows,
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
        is a matrix with a leading dimension: a view of ``gy``.
        """
        g = ctx.geometry
        K, (U1, UW), J1, (E1, EW) = len(ctx.offsets) * g.channels, tile.positions, rows.lead_disp, extent
        padded_rows = U1 + 2 * (J1 - 1)
        x1p = ctx.ws.zeroed_view("x1_padded", tile.shape, tile.batch, K, padded_rows, UW)
        inside = x1p.view(tile.batch, len(ctx.offsets), g.channels, padded_rows, UW)[:, :, :, J1 - 1 : J1 - 1 + U1]
        ctx.gather_x1(tile, out=inside)
        g2 = ctx.ws.view("g2", tile.batch, E1, K, EW)
        row_step, block = gy.stride(1), gy.stride(2)  # UW*J1*EW + EW, J1*EW
        for b in range(tile.batch):
            item, origin = x1p[b], gy[b].storage_offset()
            windows = item.as_strided((E1, K, J1 * UW), (UW, padded_rows * UW, 1), item.storage_offset())
            for e0, e1, w0, w1 in stacked_groups(U1, J1):
                z = gy.as_strided(
                    (e1 - e0, (w1 - w0) * UW, EW), (row_step, block, 1),
                    origin + (e0 - J1 + 1 + w0) * row_step + (J1 - 1 - w0) * EW,
                )
                torch.bmm(windows[e0:e1, :, w0 * UW : w1 * UW], z, out=g2[b, e0:e1])
        ctx.scatter_g2(grad2, tile, g2.view(tile.batch, E1, len(ctx.offsets), g.channels, EW).permute(0, 2, 3, 1, 4), extent)


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


def stacked_gradient_elements(rows: int, lead_disp: int, cols: int, width: int) -> int:
    """Elements of :meth:`RowMatmul._stacked_gy`'s buffer per batch item (the planner's memory model)."""
    before, after = stacked_padding(rows, lead_disp)
    return (before + rows + after) * (cols * lead_disp * width + width)


def _largest_tile(geometry: Geometry, tiling: Tiling) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Positions ``U`` and displacements ``J`` per dimension of a plan's largest tile."""
    U = tuple(min(t, max(1, -(-o // geometry.lattice(d).step))) for d, (t, o) in enumerate(zip(tiling.tile, geometry.out_size)))
    J = tuple(min(j, P) for j, P in zip(tiling.disp_tile, geometry.patch))
    return U, J


#: The execution strategies, by name. Each has the same three static methods.
STRATEGIES: dict[str, type] = {TileMatmul.name: TileMatmul, Shift.name: Shift, RowMatmul.name: RowMatmul}


def get_strategy(name: str) -> type:
    """Look a strategy up by name; an unknown name lists the valid ones."""
    try:
        return STRATEGIES[name]
    except KeyError:
        raise ArgumentValueError(f"strategy must be one of {sorted(STRATEGIES)}, got {show(name)}") from None


# --------------------------------------------------------------------------- entry points


def run_forward(x1: torch.Tensor, x2: torch.Tensor, geometry: Geometry, tiling: Tiling, sink: Sink, *, scale: float = 1.0) -> None:
    """Compute every tile of the cost volume and hand it to ``sink``.

    Args:
        x1, x2: inputs of shape ``(B, C, *in_size)``, any strides.
        geometry: their shapes and the correlation parameters.
        tiling: the plan's tiling.
        sink: receives each band ``(Bt, *J, *U)`` in the compute dtype.
        scale: multiplies every output value (the normalisation).
    """
    strategy = get_strategy(tiling.strategy)
    ws = Workspace(strategy.buffers(geometry, tiling, False), compute_dtype(x1.dtype), x1.device)
    try:
        ctx = _Context(geometry, x1, x2, ws, scale, strategy)
        for tile in iter_tiles(geometry, tiling):
            strategy.forward(ctx, tile, sink)
    finally:
        ws.release()


class Lockstep:
    """Several problems with one tiling, computed tile by tile in one shared workspace.

    The exact NaN/Inf path (:mod:`tiledcorr.nonfinite`) combines, for each
    tile, the bands of a few correlations of the same geometry (indicator maps
    stacked along channels, then the finite part): computing them tile by tile
    keeps what it combines to one tile's band instead of the whole volume.

    Args:
        problems: ``(x1, x2, geometry, scale)`` for each correlation; the
            geometries may differ in channels only (the tiling is shared), and
            the inputs in dtype (gathering a tile converts them).
        tiling: the plan's tiling.
        dtype: the compute dtype of the workspace.
    """

    def __init__(self, problems: list[tuple[torch.Tensor, torch.Tensor, Geometry, float]], tiling: Tiling,
                 dtype: torch.dtype) -> None:
        self.strategy = get_strategy(tiling.strategy)
        sizes: dict[str, int] = {}
        for _, _, geometry, _ in problems:
            for name, n in self.strategy.buffers(geometry, tiling, False).items():
                sizes[name] = max(sizes.get(name, 0), n)
        self.ws = Workspace(sizes, dtype, problems[0][0].device)
        self.contexts = [_Context(g, a, b, self.ws, scale, self.strategy) for a, b, g, scale in problems]

    def forward(self, tile: Tile, sinks: list[Sink]) -> None:
        """Hand each problem's band of ``tile`` to its sink, in order.

        A band is valid only inside its sink's ``consume``: the next problem
        reuses the buffers.
        """
        for ctx, sink in zip(self.contexts, sinks, strict=True):
            self.strategy.forward(ctx, tile, sink)

    def release(self) -> None:
        """Free the shared workspace."""
        self.ws.release()


class GradSource(Protocol):
    """Gives the gradient of each tile's band, shape ``(Bt, *J, *U)``.

    It may call ``ctx.recompute_band(tile)`` to get the tile's forward values
    (a fused reduction's backward needs them); it must return a tensor that
    does not alias the workspace.
    """

    def __call__(self, ctx: "_Context", tile: Tile) -> torch.Tensor: ...


def volume_grad(grad_out: torch.Tensor) -> GradSource:
    """The gradient source of a stored cost volume: a view of its block of ``grad_out``."""
    return lambda ctx, tile: grad_out[volume_index(ctx.geometry, tile)]


def run_backward(
    x1: torch.Tensor,
    x2: torch.Tensor,
    geometry: Geometry,
    tiling: Tiling,
    grad1: torch.Tensor | None,
    grad2: torch.Tensor | None,
    grad_source: GradSource,
    *,
    scale: float = 1.0,
) -> None:
    """Accumulate the gradients of both inputs, tile by tile, into ``grad1``/``grad2``.

    Args:
        grad1, grad2: zero-initialised accumulators of shape ``(B, C, *in_size)``
            in the compute dtype, or ``None`` for a gradient nobody needs.
        grad_source: the gradient of each tile's band; :func:`volume_grad`
            for a stored cost volume ``(B, *patch, *out_size)``.
    """
    strategy = get_strategy(tiling.strategy)
    ws = Workspace(strategy.buffers(geometry, tiling, True), compute_dtype(x1.dtype), x1.device)
    try:
        ctx = _Context(geometry, x1, x2, ws, scale, strategy)
        for tile in iter_tiles(geometry, tiling):
            strategy.backward(ctx, tile, grad_source(ctx, tile), grad1, grad2)
    finally:
        ws.release()
