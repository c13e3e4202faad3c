"""Planning the RAFT-style correlation look-up from shapes alone.

The look-up (:func:`tiledcorr.correlate_lookup`, :class:`tiledcorr.CorrBlock`)
never builds the all-pairs volume. It keeps the pooled pyramid of ``fmap2``
(channels last, zero-padded by ``2r+2`` on each side) and walks the output
positions in tiles; for each tile and level it gathers the ``(2r+2)**2``
integer grid points around every position from the pyramid, correlates them
with the tile's ``fmap1`` rows, and mixes them bilinearly.

:func:`lookup_buffers` is the single list of every buffer the execution
(:mod:`tiledcorr.execution.lookup`) allocates; the planner sums it, so the
predicted workspace is what the execution allocates, by construction.
:func:`plan_lookup` picks the largest tile of positions whose buffers fit the
budget.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from ..budget import format_bytes, resolve_budget
from ..dtypes import compute_dtype
from ..checks import check_bool, check_device, check_dtype, check_int, check_shape, show
from ..errors import MemoryBudgetError, ShapeError

__all__ = ["Buffer", "LookupPlan", "level_sizes", "lookup_buffers", "plan_lookup",
           "all_pairs_pyramid_bytes"]


def level_sizes(height: int, width: int, num_levels: int) -> tuple[tuple[int, int], ...]:
    """``(H_i, W_i)`` of each pyramid level: halved with floor, as ``avg_pool2d(2, stride=2)`` gives."""
    return tuple((height >> i, width >> i) for i in range(num_levels))


def window_side(radius: int) -> int:
    """Side ``2r+2`` of the integer grid that the ``(2r+1)**2`` bilinear window points touch."""
    return 2 * radius + 2


def padded_size(size: tuple[int, int], radius: int) -> tuple[int, int]:
    """A level's size once zero-padded by ``2r+2`` on each side (a clamped window then lies inside)."""
    pad = 2 * window_side(radius)
    return size[0] + pad, size[1] + pad


@dataclass(frozen=True)
class Buffer:
    """One tensor the look-up allocates: its name, shape and dtype.

    Tile buffers (``per_tile``) are sized for the largest tile; the execution
    uses a prefix of them for the smaller tiles at the image borders.
    """

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    per_tile: bool

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * _itemsize(self.dtype)


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def lookup_buffers(
    fmap_shape: Sequence[int], *, num_levels: int, radius: int, dtype: torch.dtype, tile_positions: int,
    backward: bool, need_fmap1: bool = True, need_fmap2: bool = True,
) -> tuple[Buffer, ...]:
    """Every buffer one forward (or backward) call of the look-up allocates, besides its inputs and results.

    Args:
        fmap_shape: ``(B, C, H, W)`` of ``fmap1`` and ``fmap2``.
        num_levels: pyramid levels.
        radius: window radius ``r``.
        dtype: the feature maps' dtype (buffers are in :func:`compute_dtype`).
        tile_positions: ``T``, the output positions of the largest tile.
        backward: the backward's buffers instead of the forward's.
        need_fmap1, need_fmap2: in the backward, which gradients are computed.

    Returns:
        The buffers, with ``S = 2r+2``, ``K = 2r+1``, ``P = sum_i (H_i + 2S)(W_i + 2S)``:
        the padded channels-last pyramid ``(B*P, C)`` (and its gradient in the
        backward), the ``S`` grid offsets, and per tile: the gathered grid
        points ``(T*S*S, C)``, the tile's fmap1 rows ``(T, C)``, the grid
        correlations ``(T, S*S)``, the x-mixed ``(T, S, K)`` and the window
        ``(T, K, K)``, the gather index ``(T, S, S)`` with its row and column
        parts ``(T, S)``, and per position coordinates, floors, weights and
        window origins ``(T,)``; in the backward also the fmap1 rows' gradient.
    """
    batch, channels, height, width = (int(n) for n in fmap_shape)
    side, k = window_side(radius), 2 * radius + 1
    rows = batch * sum(math.prod(padded_size(s, radius)) for s in level_sizes(height, width, num_levels))
    acc, t = compute_dtype(dtype), int(tile_positions)
    fixed = [Buffer("offsets", (side,), torch.int64, False)]
    if not backward or need_fmap1:  # the backward needs the pyramid's values only for fmap1's gradient
        fixed.append(Buffer("pyramid", (rows, channels), acc, False))
    if backward and need_fmap2:
        fixed.append(Buffer("grad_pyramid", (rows, channels), acc, False))
    tile = [
        Buffer("gathered", (t * side * side, channels), acc, True),
        Buffer("fmap1_rows", (t, channels), acc, True),
        Buffer("grid", (t, side * side), acc, True),
        Buffer("x_mixed", (t, side, k), acc, True),
        Buffer("window", (t, k, k), acc, True),
        Buffer("index", (t, side, side), torch.int64, True),
        Buffer("index_rows", (t, side), torch.int64, True),
        Buffer("index_cols", (t, side), torch.int64, True),
        *(Buffer(name, (t,), acc, True) for name in ("coords_x", "coords_y", "frac_x", "frac_y", "floor",
                                                       "weight_x0", "weight_y0")),
        Buffer("origin_x", (t,), torch.int64, True),
        Buffer("origin_y", (t,), torch.int64, True),
    ]
    if backward and need_fmap1:
        tile.append(Buffer("grad_fmap1_rows", (t, channels), acc, True))
    return tuple(fixed + tile)


def workspace_bytes(buffers: Sequence[Buffer]) -> int:
    """Total bytes of ``buffers``."""
    return sum(b.nbytes for b in buffers)


def all_pairs_pyramid_bytes(fmap_shape: Sequence[int], num_levels: int, dtype: torch.dtype) -> int:
    """What RAFT's ``CorrBlock`` holds: ``B*H*W * sum_i H_i*W_i`` numbers of the input dtype."""
    batch, _, height, width = (int(n) for n in fmap_shape)
    cells = sum(h * w for h, w in level_sizes(height, width, num_levels))
    return batch * height * width * cells * _itemsize(dtype)


@dataclass(frozen=True)
class LookupPlan:
    """How the look-up runs, and what it costs, for given shapes and a budget.

    Attributes:
        fmap_shape: ``(B, C, H, W)``.
        num_levels, radius: the look-up's parameters.
        dtype: the feature maps' dtype; ``compute_dtype`` the buffers' and the result's.
        device: where it runs.
        budget_bytes: the resolved memory budget.
        requires_grad: planned so that the backward (not only the forward) fits.
        levels: ``(H_i, W_i)`` per level.
        tile_rows, tile_cols: the tile of output positions (whole rows when ``tile_cols == W``).
        num_tiles: tiles over all images (each visits every level).
        workspace_forward_bytes, workspace_backward_bytes: predicted workspace of
            one forward and one backward call (inputs and results excluded).
        output_bytes: the result ``(B, L*(2r+1)**2, H, W)``.
        all_pairs_bytes: RAFT's all-pairs pyramid for the same shapes.
    """

    fmap_shape: tuple[int, int, int, int]
    num_levels: int
    radius: int
    dtype: torch.dtype
    compute_dtype: torch.dtype
    device: torch.device
    budget_bytes: int
    requires_grad: bool
    levels: tuple[tuple[int, int], ...]
    tile_rows: int
    tile_cols: int
    num_tiles: int
    workspace_forward_bytes: int
    workspace_backward_bytes: int
    output_bytes: int
    all_pairs_bytes: int

    @property
    def tile_positions(self) -> int:
        """Output positions in the largest tile."""
        return self.tile_rows * self.tile_cols

    @property
    def output_shape(self) -> tuple[int, int, int, int]:
        batch, _, height, width = self.fmap_shape
        return batch, self.num_levels * (2 * self.radius + 1) ** 2, height, width

    @property
    def workspace_bytes(self) -> int:
        """The workspace planned to fit the budget: the backward's if ``requires_grad``, else the forward's."""
        return self.workspace_backward_bytes if self.requires_grad else self.workspace_forward_bytes

    def buffers(self, *, backward: bool, need_fmap1: bool = True, need_fmap2: bool = True) -> tuple[Buffer, ...]:
        """The buffers the execution allocates under this plan (see :func:`lookup_buffers`)."""
        return lookup_buffers(self.fmap_shape, num_levels=self.num_levels, radius=self.radius, dtype=self.dtype,
                              tile_positions=self.tile_positions, backward=backward, need_fmap1=need_fmap1,
                              need_fmap2=need_fmap2)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields (dtypes and the device as strings), with the tile size and output shape."""
        return {
            "fmap_shape": list(self.fmap_shape), "num_levels": self.num_levels, "radius": self.radius,
            "dtype": str(self.dtype).replace("torch.", ""),
            "compute_dtype": str(self.compute_dtype).replace("torch.", ""), "device": str(self.device),
            "budget_bytes": self.budget_bytes, "requires_grad": self.requires_grad,
            "levels": [list(s) for s in self.levels], "tile_rows": self.tile_rows, "tile_cols": self.tile_cols,
            "tile_positions": self.tile_positions, "num_tiles": self.num_tiles,
            "workspace_forward_bytes": self.workspace_forward_bytes,
            "workspace_backward_bytes": self.workspace_backward_bytes, "output_bytes": self.output_bytes,
            "output_shape": list(self.output_shape), "all_pairs_bytes": self.all_pairs_bytes,
        }

    def __str__(self) -> str:
        batch, channels, height, width = self.fmap_shape
        k = 2 * self.radius + 1
        backward_note = "" if self.requires_grad else " (not planned: requires_grad=False)"
        lines = [
            f"tiledcorr look-up plan: fmaps {tuple(self.fmap_shape)} {str(self.dtype).replace('torch.', '')} "
            f"on {self.device}, {self.num_levels} level(s) {list(self.levels)}, radius {self.radius} "
            f"({k}x{k} window)",
            f"  budget: {format_bytes(self.budget_bytes)}, planned for the "
            f"{'backward' if self.requires_grad else 'forward'}",
            f"  tile: {self.tile_rows} x {self.tile_cols} positions ({self.tile_positions}), "
            f"{self.num_tiles} tile(s) x {self.num_levels} level(s)",
            f"  workspace: forward {format_bytes(self.workspace_forward_bytes)}, "
            f"backward {format_bytes(self.workspace_backward_bytes)}{backward_note}",
            f"  output: {tuple(self.output_shape)} {str(self.compute_dtype).replace('torch.', '')}, "
            f"{format_bytes(self.output_bytes)}",
            f"  RAFT's all-pairs pyramid would hold {format_bytes(self.all_pairs_bytes)} "
            f"({batch} x {height * width} x {sum(h * w for h, w in self.levels)} numbers)",
        ]
        return "\n".join(lines)


def _check_num_levels(num_levels: Any, height: int, width: int) -> int:
    num_levels = check_int("num_levels", num_levels, minimum=1)
    if height * width > 0 and min(height, width) >> (num_levels - 1) == 0:
        raise ShapeError(
            f"num_levels={num_levels} needs feature maps of at least {2 ** (num_levels - 1)} pixels in "
            f"height and width (each level halves them), got {height} x {width}"
        )
    return num_levels


def _tile_shape(height: int, width: int, positions: int) -> tuple[int, int]:
    """The tile of at most ``positions`` positions: whole rows when at least one row fits, else part of a row."""
    if positions >= width:
        return min(height, positions // width), width
    return 1, positions


def plan_lookup(
    fmap_shape: Sequence[int], coords_shape: Sequence[int] | None = None, *, num_levels: int, radius: int,
    dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu", memory_budget: Any = None,
    requires_grad: bool = False,
) -> LookupPlan:
    """Plan the look-up of ``fmap_shape`` feature maps within ``memory_budget``, from shapes alone.

    The tile is the largest one whose workspace (the forward's, or the
    backward's with ``requires_grad``) fits the budget: whole rows of one
    image when a row fits, else part of a row.

    Args:
        fmap_shape: ``(B, C, H, W)`` of ``fmap1`` and ``fmap2``.
        coords_shape: ``(B, 2, H, W)``, checked when given.
        num_levels: pyramid levels, >= 1 (``H`` and ``W`` at least ``2**(num_levels-1)``).
        radius: window radius ``r`` >= 0.
        dtype: the feature maps' dtype.
        device: where it runs (the budget's free memory is read there).
        memory_budget: any form :func:`tiledcorr.resolve_budget` accepts.
        requires_grad: size the tile so that the backward fits too.

    Returns:
        A :class:`LookupPlan`; ``print`` it for a report.

    Raises:
        MemoryBudgetError: even a one-position tile does not fit; its
            ``minimum_bytes`` is the smallest budget that works.
        ShapeError, ArgumentTypeError, ArgumentValueError: bad arguments.

    Example:
        >>> import torch
        >>> from tiledcorr.planning.lookup import plan_lookup
        >>> p = plan_lookup((1, 256, 136, 240), num_levels=4, radius=4, memory_budget="256MiB")
        >>> p.tile_rows, p.tile_cols, p.workspace_forward_bytes <= 256 * 2**20
        (8, 240, True)
    """
    batch, channels, height, width = check_shape("fmap_shape", fmap_shape, spatial_dims=(2,))
    shape = (batch, channels, height, width)
    if coords_shape is not None:
        coords = check_shape("coords_shape", coords_shape, spatial_dims=(2,))
        if coords != (batch, 2, height, width):
            raise ShapeError(f"coords_shape must be (B, 2, H, W) = {(batch, 2, height, width)}, got {show(coords_shape)}")
    num_levels = _check_num_levels(num_levels, height, width)
    radius = check_int("radius", radius, minimum=0)
    dtype = check_dtype("dtype", dtype)
    device = check_device("device", device)
    requires_grad = check_bool("requires_grad", requires_grad)
    budget = resolve_budget(memory_budget, device)

    def cost(positions: int, backward: bool) -> int:
        return workspace_bytes(lookup_buffers(shape, num_levels=num_levels, radius=radius, dtype=dtype,
                                              tile_positions=positions, backward=backward))

    positions_total = height * width
    if batch * positions_total == 0:
        rows, cols, tiles = 0, 0, 0
        forward = backward = 0
    else:
        planned = requires_grad
        fixed, per_position = cost(0, planned), cost(1, planned) - cost(0, planned)
        if fixed + per_position > budget:
            raise MemoryBudgetError(
                f"the look-up needs at least {format_bytes(fixed + per_position)} of workspace "
                f"({'backward' if planned else 'forward'}: the padded fmap2 pyramid "
                f"{format_bytes(fixed)} plus one position's tile buffers {format_bytes(per_position)}), "
                f"more than memory_budget {format_bytes(budget)}",
                minimum_bytes=fixed + per_position,
            )
        rows, cols = _tile_shape(height, width, min(positions_total, (budget - fixed) // per_position))
        tiles = batch * -(-height // rows) * -(-width // cols)
        forward, backward = cost(rows * cols, False), cost(rows * cols, True)
    acc = compute_dtype(dtype)
    k = 2 * radius + 1
    return LookupPlan(
        fmap_shape=shape, num_levels=num_levels, radius=radius, dtype=dtype, compute_dtype=acc, device=device,
        budget_bytes=budget, requires_grad=requires_grad, levels=level_sizes(height, width, num_levels),
        tile_rows=rows, tile_cols=cols, num_tiles=tiles, workspace_forward_bytes=forward,
        workspace_backward_bytes=backward, output_bytes=batch * num_levels * k * k * positions_total * _itemsize(acc),
        all_pairs_bytes=all_pairs_pyramid_bytes(shape, num_levels, dtype),
    )
