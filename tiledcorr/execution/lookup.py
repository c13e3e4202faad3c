"""Executing the look-up: tile by tile over output positions, forward and backward.

Each call allocates exactly the buffers :func:`tiledcorr.planning.lookup.lookup_buffers`
lists, once, and then works in them with ``out=`` and in-place operations
(so the plan's workspace is the allocation, see the module docstring there).

How one tile of positions is computed at level ``i`` (``S = 2r+2``, ``K = 2r+1``):

1. ``(x, y) = coords / 2**i``; ``x0 = floor(x) - r`` (likewise ``y0``), ``fx = x - floor(x)``.
   Every window point shares ``(fx, fy)``, since RAFT's offsets are integers.
2. Gather the ``S x S`` integer grid ``(x0 + jx, y0 + jy)`` of the level from the
   padded channels-last pyramid; its zero border gives ``grid_sample``'s zeros
   outside the image (a window origin is clamped into the border, which
   changes nothing: a window that far out is all zeros either way).
3. Correlate the tile's fmap1 rows with the grid points (``(T, C) x (T, S*S, C)``).
4. Mix bilinearly: along x with ``(1-fx, fx)``, then along y with
   ``(1-fy, fy)`` times the normalisation, giving ``window[t, b, a]`` for window
   point ``(a, b)``, written to channel ``level*K*K + a*K + b``.

The backward runs the same steps backwards: the window's gradient is spread
onto the grid, gives fmap1's rows ``sum grid_grad * gathered`` and, scattered
with ``index_add_``, the padded pyramid's gradient, which the adjoint of the
pooling (each level's gradient / 4 added to its four children) brings to fmap2.
"""

from __future__ import annotations

from typing import Callable, Iterator

import torch

from ..planning.lookup import LookupPlan, padded_size, window_side

__all__ = ["lookup_forward", "lookup_backward"]

#: Called with each buffer allocated (name, tensor): a test hook to compare with the plan.
AllocationHook = Callable[[str, torch.Tensor], None]


class _Workspace:
    """The plan's buffers, allocated once; ``ws.name`` is the full buffer, ``ws.tile(name, t)`` its prefix."""

    def __init__(self, plan: LookupPlan, device: torch.device, *, backward: bool, need_fmap1: bool = True,
                 need_fmap2: bool = True, on_allocate: AllocationHook | None = None) -> None:
        self._buffers = {}
        for spec in plan.buffers(backward=backward, need_fmap1=need_fmap1, need_fmap2=need_fmap2):
            tensor = torch.empty(spec.shape, dtype=spec.dtype, device=device)
            if on_allocate is not None:
                on_allocate(spec.name, tensor)
            self._buffers[spec.name] = tensor

    def __getattr__(self, name: str) -> torch.Tensor:
        try:
            return self.__dict__["_buffers"][name]
        except KeyError:
            raise AttributeError(name) from None

    def tile(self, name: str, positions: int) -> torch.Tensor:
        """The first ``positions`` entries of a per-tile buffer (contiguous)."""
        return self._buffers[name][:positions]


class _Level:
    """Where level ``i`` lies in the flat padded pyramid ``(B * sum_i Hp_i*Wp_i, C)``."""

    def __init__(self, plan: LookupPlan, i: int, start: int) -> None:
        self.i = i
        self.height, self.width = plan.levels[i]
        self.padded_height, self.padded_width = padded_size(plan.levels[i], plan.radius)
        self.start = start
        self.image_rows = self.padded_height * self.padded_width
        self.pad = window_side(plan.radius)

    def interior(self, flat: torch.Tensor, batch: int) -> torch.Tensor:
        """``(B, H_i, W_i, C)`` view of the level's image inside its zero border."""
        block = flat[self.start : self.start + batch * self.image_rows]
        block = block.view(batch, self.padded_height, self.padded_width, flat.shape[1])
        return block[:, self.pad : self.pad + self.height, self.pad : self.pad + self.width]


def _levels(plan: LookupPlan) -> list[_Level]:
    levels, start = [], 0
    for i in range(plan.num_levels):
        levels.append(_Level(plan, i, start))
        start += plan.fmap_shape[0] * levels[-1].image_rows
    return levels


def _children(parent: torch.Tensor, height: int, width: int) -> Iterator[torch.Tensor]:
    """The four strided ``(B, height, width, C)`` views that ``avg_pool2d(2, stride=2)`` averages, in its order."""
    for dy in (0, 1):
        for dx in (0, 1):
            yield parent[:, dy : 2 * height : 2, dx : 2 * width : 2]


def _build_pyramid(ws: _Workspace, plan: LookupPlan, levels: list[_Level], fmap2: torch.Tensor) -> None:
    """Fill the padded channels-last pyramid: level 0 is fmap2, level i+1 the 2x2 average of level i."""
    batch = plan.fmap_shape[0]
    ws.pyramid.zero_()
    levels[0].interior(ws.pyramid, batch).copy_(fmap2.permute(0, 2, 3, 1))
    for fine, coarse in zip(levels, levels[1:]):
        out = coarse.interior(ws.pyramid, batch)
        a, b, c, d = _children(fine.interior(ws.pyramid, batch), coarse.height, coarse.width)
        torch.add(a, b, out=out)
        out.add_(c).add_(d).mul_(0.25)


def _pooling_adjoint(ws: _Workspace, plan: LookupPlan, levels: list[_Level]) -> None:
    """Bring every level's gradient down to level 0, coarsest first: a quarter to each of the four children."""
    batch = plan.fmap_shape[0]
    for fine, coarse in reversed(list(zip(levels, levels[1:]))):
        grad = coarse.interior(ws.grad_pyramid, batch).mul_(0.25)
        for child in _children(fine.interior(ws.grad_pyramid, batch), coarse.height, coarse.width):
            child.add_(grad)


class _Tile:
    """One tile of output positions: image ``b``, rows ``ys``, columns ``xs``."""

    def __init__(self, b: int, ys: slice, xs: slice) -> None:
        self.b, self.ys, self.xs = b, ys, xs
        self.rows, self.cols = ys.stop - ys.start, xs.stop - xs.start
        self.positions = self.rows * self.cols


def _tiles(plan: LookupPlan) -> Iterator[_Tile]:
    batch, _, height, width = plan.fmap_shape
    for b in range(batch):
        for y in range(0, height, plan.tile_rows):
            for x in range(0, width, plan.tile_cols):
                yield _Tile(b, slice(y, min(y + plan.tile_rows, height)), slice(x, min(x + plan.tile_cols, width)))


def _load_tile(ws: _Workspace, tile: _Tile, fmap1: torch.Tensor, coords: torch.Tensor, side: int) -> tuple:
    """Copy the tile's coordinates and fmap1 rows (channels last) into the workspace, in the compute dtype.

    Returns the tile's views that the forward and the backward share: the fmap1
    rows ``(t, C)``, the grid ``(t, S, S)`` (``[t, jy, jx]``), the x-mixed and
    window buffers, and the four bilinear weights (:func:`_weights`; set per level).
    """
    t = tile.positions
    ws.tile("coords_x", t).view(tile.rows, tile.cols).copy_(coords[tile.b, 0, tile.ys, tile.xs])
    ws.tile("coords_y", t).view(tile.rows, tile.cols).copy_(coords[tile.b, 1, tile.ys, tile.xs])
    rows = ws.tile("fmap1_rows", t)
    rows.view(tile.rows, tile.cols, -1).copy_(fmap1[tile.b, :, tile.ys, tile.xs].permute(1, 2, 0))
    grid = ws.tile("grid", t).view(t, side, side)
    return rows, grid, ws.tile("x_mixed", t), ws.tile("window", t), _weights(ws, t)


def _axis(ws: _Workspace, t: int, level: _Level, radius: int, axis: str, size: int) -> None:
    """Fractions ``frac_<axis>`` and padded window origins ``origin_<axis>`` of one axis at ``level``."""
    frac, floor, origin = ws.tile(f"frac_{axis}", t), ws.tile("floor", t), ws.tile(f"origin_{axis}", t)
    torch.mul(ws.tile(f"coords_{axis}", t), 2.0 ** -level.i, out=frac)  # exact: a power of two
    torch.floor(frac, out=floor)
    frac.sub_(floor)  # NaN for non-finite coordinates, so their values are NaN, as grid_sample gives
    # A window starting at or beyond -S or the size lies entirely in the zero border: clamp it there.
    floor.nan_to_num_(nan=float(radius - level.pad)).clamp_(radius - level.pad, size + radius)
    origin.copy_(floor).add_(level.pad - radius)  # the window's first grid point, in padded coordinates


def _prepare_level(ws: _Workspace, t: int, tile: _Tile, level: _Level, plan: LookupPlan, scale: float) -> torch.Tensor:
    """Gather index ``(t*S*S,)`` of the tile's grid at ``level``; also sets the tile's bilinear weights."""
    r = plan.radius
    _axis(ws, t, level, r, "x", level.width)
    _axis(ws, t, level, r, "y", level.height)
    offsets = ws.offsets
    rows, cols, index = ws.tile("index_rows", t), ws.tile("index_cols", t), ws.tile("index", t)
    torch.add(ws.tile("origin_y", t).unsqueeze(1), offsets, out=rows)
    rows.mul_(level.padded_width).add_(level.start + tile.b * level.image_rows)
    torch.add(ws.tile("origin_x", t).unsqueeze(1), offsets, out=cols)
    torch.add(rows.unsqueeze(2), cols.unsqueeze(1), out=index)
    wx0, wy0, fy = ws.tile("weight_x0", t), ws.tile("weight_y0", t), ws.tile("frac_y", t)
    torch.neg(ws.tile("frac_x", t), out=wx0).add_(1.0)
    torch.neg(fy, out=wy0).add_(1.0).mul_(scale)  # the normalisation rides on the y weights
    fy.mul_(scale)
    return index.view(-1)


def _channels(out: torch.Tensor, tile: _Tile, level: int, k: int) -> torch.Tensor:
    """``(K, K, rows, cols)`` view ``[a, b]`` of the tile's channels of ``level`` in a ``(B, L*K*K, H, W)`` tensor."""
    block = out[tile.b, level * k * k : (level + 1) * k * k, tile.ys, tile.xs]
    return block.unflatten(0, (k, k))


def _weights(ws: _Workspace, t: int) -> tuple[torch.Tensor, ...]:
    """``(1-fx, fx, (1-fy)*scale, fy*scale)`` of the tile, shaped ``(t, 1, 1)`` to broadcast."""
    names = ("weight_x0", "frac_x", "weight_y0", "frac_y")
    return tuple(ws.tile(name, t).view(t, 1, 1) for name in names)


def lookup_forward(fmap1: torch.Tensor, fmap2: torch.Tensor, coords: torch.Tensor, plan: LookupPlan, scale: float,
                   *, on_allocate: AllocationHook | None = None) -> torch.Tensor:
    """The look-up ``(B, L*(2r+1)**2, H, W)`` in ``plan.compute_dtype``, no autograd.

    Args:
        fmap1, fmap2: ``(B, C, H, W)``, validated, of ``plan.fmap_shape``.
        coords: ``(B, 2, H, W)``, floating (converted to the compute dtype per tile).
        plan: from :func:`tiledcorr.planning.lookup.plan_lookup`.
        scale: factor of every correlation (``1/sqrt(C)`` for RAFT).
        on_allocate: test hook, called for each workspace buffer.
    """
    out = torch.empty(plan.output_shape, dtype=plan.compute_dtype, device=fmap1.device)
    if out.numel() == 0:
        return out
    ws = _Workspace(plan, fmap1.device, backward=False, on_allocate=on_allocate)
    levels = _levels(plan)
    _build_pyramid(ws, plan, levels, fmap2)
    torch.arange(ws.offsets.numel(), out=ws.offsets)
    side, k, channels = window_side(plan.radius), 2 * plan.radius + 1, plan.fmap_shape[1]
    for tile in _tiles(plan):
        t = tile.positions
        rows, grid, x_mixed, window, (wx0, wx1, wy0, wy1) = _load_tile(ws, tile, fmap1, coords, side)
        for level in levels:
            index = _prepare_level(ws, t, tile, level, plan, scale)
            gathered = ws.tile("gathered", t * side * side)
            torch.index_select(ws.pyramid, 0, index, out=gathered)
            torch.bmm(rows.view(t, 1, channels), gathered.view(t, side * side, channels).transpose(1, 2),
                      out=grid.view(t, 1, side * side))
            torch.mul(grid[:, :, :-1], wx0, out=x_mixed).addcmul_(grid[:, :, 1:], wx1)  # [t, jy, a]
            torch.mul(x_mixed[:, :-1], wy0, out=window).addcmul_(x_mixed[:, 1:], wy1)  # [t, b, a]
            _channels(out, tile, level.i, k).copy_(window.view(tile.rows, tile.cols, k, k).permute(3, 2, 0, 1))
    return out


def lookup_backward(grad: torch.Tensor, fmap1: torch.Tensor, fmap2: torch.Tensor, coords: torch.Tensor,
                    plan: LookupPlan, scale: float, need_fmap1: bool, need_fmap2: bool, *,
                    on_allocate: AllocationHook | None = None) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Gradients of fmap1 and fmap2 (``None`` where not needed), in their dtype, from the output's ``grad``.

    Recomputes the gather from the saved inputs tile by tile; ``coords`` get no
    gradient. Arguments as :func:`lookup_forward`; ``grad`` is ``(B, L*(2r+1)**2, H, W)``.
    """
    grad1 = torch.empty_like(fmap1, memory_format=torch.contiguous_format) if need_fmap1 else None
    grad2 = torch.empty_like(fmap2, memory_format=torch.contiguous_format) if need_fmap2 else None
    if not (need_fmap1 or need_fmap2) or fmap1.numel() == 0:
        for g in (grad1, grad2):
            if g is not None:
                g.zero_()
        return grad1, grad2
    ws = _Workspace(plan, fmap1.device, backward=True, need_fmap1=need_fmap1, need_fmap2=need_fmap2,
                    on_allocate=on_allocate)
    levels = _levels(plan)
    if need_fmap1:
        _build_pyramid(ws, plan, levels, fmap2)
    if need_fmap2:
        ws.grad_pyramid.zero_()
    torch.arange(ws.offsets.numel(), out=ws.offsets)
    side, k, channels = window_side(plan.radius), 2 * plan.radius + 1, plan.fmap_shape[1]
    for tile in _tiles(plan):
        t = tile.positions
        rows, grid, x_mixed, window, (wx0, wx1, wy0, wy1) = _load_tile(ws, tile, fmap1, coords, side)
        if need_fmap1:
            rows_grad = ws.tile("grad_fmap1_rows", t)
            rows_grad.zero_()
        for level in levels:
            index = _prepare_level(ws, t, tile, level, plan, scale)
            window.view(tile.rows, tile.cols, k, k).copy_(_channels(grad, tile, level.i, k).permute(2, 3, 1, 0))
            # adjoint of the y mix, then of the x mix: the gradient of every grid correlation
            torch.mul(window, wy0, out=x_mixed[:, :-1])
            x_mixed[:, -1].zero_()
            x_mixed[:, 1:].addcmul_(window, wy1)
            torch.mul(x_mixed, wx0, out=grid[:, :, :-1])
            grid[:, :, -1].zero_()
            grid[:, :, 1:].addcmul_(x_mixed, wx1)
            gathered = ws.tile("gathered", t * side * side)
            grid_row = grid.view(t, 1, side * side)
            if need_fmap1:
                torch.index_select(ws.pyramid, 0, index, out=gathered)
                rows_grad.view(t, 1, channels).baddbmm_(grid_row, gathered.view(t, side * side, channels))
            if need_fmap2:
                torch.mul(grid_row.transpose(1, 2), rows.view(t, 1, channels), out=gathered.view(t, side * side, channels))
                ws.grad_pyramid.index_add_(0, index, gathered)
        if grad1 is not None:  # need_fmap1
            grad1[tile.b, :, tile.ys, tile.xs].copy_(rows_grad.view(tile.rows, tile.cols, channels).permute(2, 0, 1))
    if grad2 is not None:  # need_fmap2
        _pooling_adjoint(ws, plan, levels)
        grad2.copy_(levels[0].interior(ws.grad_pyramid, plan.fmap_shape[0]).permute(0, 3, 1, 2))
    return grad1, grad2
