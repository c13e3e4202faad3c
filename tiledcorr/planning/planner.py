"""Planning from shapes alone: the plan, and how the planner ranks what the strategy registry offers.

The planner enumerates tilings (strategy, batch tile, position tile and
displacement tile per dimension). Each strategy that accepts the problem
(:meth:`~tiledcorr.planning.registry.Strategy.refusal`) predicts, for every
candidate, the workspace it allocates (its ``buffers``, exact sizes) and the
seconds it takes (its ``cost``, a model of matmul efficiency, bytes moved and
per-tile overhead). The planner keeps the candidates that fit the budget and
picks the fastest; among plans within 5% of the fastest it picks the
smallest, so a default call does not hold gigabytes where a few hundred
megabytes run as fast.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch

from .. import checks
from ..budget import format_bytes, free_memory, is_relative, resolve_budget
from ..dtypes import compute_dtype, element_size
from ..errors import ArgumentTypeError, ArgumentValueError, MemoryBudgetError, ShapeError
from ..geometry import Geometry, check_sizes, count_spans
from . import registry
from .costs import CostTerms, DeviceModel, SinkCost, device_model
from .tiling import TileDims, Tiling, positions_per_dim, total_elements

#: Plans within this factor of the fastest count as "about equally fast".
EQUALLY_FAST = 1.05


@dataclass(frozen=True)
class Plan:
    """An immutable execution plan for one correlation problem.

    Attributes:
        geometry: shapes and parameters the plan was made for.
        dtype: input dtype; ``compute_dtype`` is what sums accumulate in.
        device_type: ``"cpu"`` or ``"cuda"``.
        tiling: strategy and tile sizes (see :class:`tiledcorr.planning.tiling.Tiling`).
        budget_bytes: the workspace budget the plan was made for.
        forward_workspace_bytes: predicted peak temporary memory of the forward.
        backward_workspace_bytes: the same for the backward (recomputes per tile).
        output_bytes: size of the cost volume the caller asked for.
        naive_bytes: the ``(B, C*k*k, P*P, oH, oW)`` tensor the unfold approach builds.
        predicted_seconds: the cost model's estimate (forward; plus backward
            when planned with ``requires_grad``), only meaningful relative to others.
        requires_grad: whether the backward had to fit the budget too.
        sink_cost: the per-tile temporaries of a fused reduction, included in
            both workspace figures (zero for the stored cost volume).
    """

    geometry: Geometry
    dtype: torch.dtype
    device_type: str
    tiling: Tiling
    budget_bytes: int
    forward_workspace_bytes: int
    backward_workspace_bytes: int
    output_bytes: int
    naive_bytes: int
    predicted_seconds: float
    requires_grad: bool
    sink_cost: SinkCost = SinkCost()
    compute_dtype: torch.dtype = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "compute_dtype", compute_dtype(self.dtype))

    @property
    def strategy(self) -> str:
        return self.tiling.strategy

    @property
    def displacement_chunk(self) -> int:
        """Displacements computed per tile."""
        return math.prod(min(j, P) for j, P in zip(self.tiling.disp_tile, self.geometry.patch))

    @property
    def row_tile(self) -> int:
        """Output rows per tile (within one position class; see :mod:`tiledcorr.geometry`)."""
        return self.tiling.tile[-2] if self.geometry.ndim >= 2 else 1

    @property
    def column_tile(self) -> int:
        return self.tiling.tile[-1]

    @property
    def grid(self) -> tuple[int, ...]:
        """Number of blocks along batch and each spatial dimension."""
        g, t = self.geometry, self.tiling
        return (
            -(-g.batch // t.batch_tile) if g.batch else 0,
            *(count_spans(g, d, t.tile[d], t.disp_tile[d]) for d in range(g.ndim)),
        )

    @property
    def passes(self) -> int:
        """Number of tiles the forward (and again the backward) executes."""
        return math.prod(self.grid)

    @property
    def peak_workspace_bytes(self) -> int:
        return max(self.forward_workspace_bytes, self.backward_workspace_bytes if self.requires_grad else 0)

    def check_fits(self, geometry: Geometry, dtype: torch.dtype, device: torch.device) -> None:
        """Raise if this plan was made for other shapes, parameters, dtype or device, or if a field is forged.

        A :class:`Plan` is public and a dataclass, so ``dataclasses.replace``
        can put anything in it: every field an operator uses is checked here
        (the tiling and the budget by :func:`check_tiling` and
        :func:`check_budget_bytes`), the others are recomputed when it runs.
        """
        if not isinstance(self.geometry, Geometry):
            raise ArgumentTypeError(f"plan.geometry must be a Geometry, got {checks.show(self.geometry, typed=True)}; "
                                    "make plans with tiledcorr.plan()")
        if geometry != self.geometry:
            raise ArgumentValueError(
                f"plan was made for {_describe(self.geometry)}, but the inputs and "
                f"parameters give {_describe(geometry)}; make a new plan with tiledcorr.plan()"
            )
        if dtype != self.dtype or torch.device(device).type != self.device_type:
            raise ArgumentValueError(
                f"plan was made for dtype {self.dtype} on {self.device_type}, but the inputs "
                f"are {dtype} on {torch.device(device).type}"
            )
        check_tiling(self.tiling, geometry.ndim)
        check_budget_bytes(self.budget_bytes)

    def __str__(self) -> str:
        g, t = self.geometry, self.tiling
        # A fused reduction's plan (it counts the sink's temporaries) never stores the volume.
        volume = ("volume (B, *patch, *out)", ", never stored (fused reduction)") if self.sink_cost != SinkCost() else (
            "output (B, *patch, *out)", "")
        lines = [
            f"tiledcorr plan: {_describe(g)}, {str(self.dtype).replace('torch.', '')} on {self.device_type}",
            f"  {volume[0]}   {tuple(g.out_shape)}  {format_bytes(self.output_bytes)}{volume[1]}",
            f"  naive unfold would need    {format_bytes(self.naive_bytes)}",
            f"  budget (workspace)         {format_bytes(self.budget_bytes)}",
            f"  planned peak workspace     forward {format_bytes(self.forward_workspace_bytes)}, "
            f"backward {format_bytes(self.backward_workspace_bytes)}",
            f"  strategy                   {t.strategy}",
            f"  tile                       batch {t.batch_tile}, positions {'x'.join(map(str, t.tile))}, "
            f"displacements {'x'.join(str(min(j, P)) for j, P in zip(t.disp_tile, g.patch))} "
            f"(of {'x'.join(map(str, g.patch))})",
            f"  chunk grid                 {' x '.join(map(str, self.grid))} (batch x per-dimension blocks)",
            f"  passes                     {self.passes} tiles per forward, {self.passes} per backward",
        ]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """Machine-readable summary (used by ``tiledcorr plan --json``)."""
        g, t = self.geometry, self.tiling
        return {
            "input_shape": [g.batch, g.channels, *g.in_size],
            "kernel_size": list(g.kernel), "patch_size": list(g.patch), "stride": list(g.stride),
            "padding": list(g.padding), "dilation": list(g.dilation), "dilation_patch": list(g.dilation_patch),
            "output_shape": list(g.out_shape), "dtype": str(self.dtype).replace("torch.", ""),
            "device": self.device_type, "strategy": t.strategy, "batch_tile": t.batch_tile,
            "position_tile": list(t.tile), "displacement_tile": [min(j, P) for j, P in zip(t.disp_tile, g.patch)],
            "displacement_chunk": self.displacement_chunk, "grid": list(self.grid), "passes": self.passes,
            "budget_bytes": self.budget_bytes, "forward_workspace_bytes": self.forward_workspace_bytes,
            "backward_workspace_bytes": self.backward_workspace_bytes, "output_bytes": self.output_bytes,
            "naive_bytes": self.naive_bytes, "predicted_seconds": self.predicted_seconds,
            "fused_reduction": self.sink_cost != SinkCost(),
        }


def _describe(g: Geometry) -> str:
    size = "x".join(map(str, g.in_size))
    params = [f"{name} {'x'.join(map(str, v))}" for name, v in (
        ("kernel", g.kernel), ("patch", g.patch), ("stride", g.stride), ("padding", g.padding),
        ("dilation", g.dilation), ("dilation_patch", g.dilation_patch)) if any(x != (0 if name == "padding" else 1) for x in v)]
    return f"B={g.batch} C={g.channels} {size}" + (", " + ", ".join(params) if params else "")


def make_geometry(
    input1_shape: Sequence[int],
    input2_shape: Sequence[int] | None,
    kernel_size, patch_size, stride, padding, dilation, dilation_patch,
) -> Geometry:
    """Validate shapes and parameters and build the :class:`Geometry`.

    A repeated call with the same shapes and plain int (or tuple of int)
    parameters returns the same, already validated, geometry (a dictionary
    lookup): every public call starts here.
    """
    params = (kernel_size, patch_size, stride, padding, dilation, dilation_patch)
    key = None
    if type(input1_shape) is torch.Size and all(map(_is_plain, params)) and not torch.compiler.is_compiling():
        key = (input1_shape, input2_shape, params)
        cached = _GEOMETRIES.get(key)
        if cached is not None:
            return cached
    geometry = _make_geometry(input1_shape, input2_shape, *params)
    if key is not None:
        if len(_GEOMETRIES) >= _GEOMETRIES_MAX:
            _GEOMETRIES.clear()
        _GEOMETRIES[key] = geometry
    return geometry


#: Geometries by public arguments (:func:`make_geometry`).
_GEOMETRIES: dict[tuple, Geometry] = {}
_GEOMETRIES_MAX = 1024


def _is_plain(value: Any) -> bool:
    """An int, or a tuple of ints, exactly: arguments that hash as they validate (``True == 1`` hashes alike)."""
    return type(value) is int or (type(value) is tuple and all(type(v) is int for v in value))


def _make_geometry(
    input1_shape: Sequence[int],
    input2_shape: Sequence[int] | None,
    kernel_size, patch_size, stride, padding, dilation, dilation_patch,
) -> Geometry:
    shape1 = checks.check_shape("input1_shape", input1_shape)
    if input2_shape is not None and checks.check_shape("input2_shape", input2_shape) != shape1:
        raise ShapeError(f"input1 and input2 must have the same shape, got {shape1} and {tuple(input2_shape)}")
    n = len(shape1) - 2
    geometry = Geometry(
        batch=shape1[0], channels=shape1[1], in_size=shape1[2:],
        kernel=checks.as_tuple("kernel_size", kernel_size, n, minimum=1),
        patch=checks.as_tuple("patch_size", patch_size, n, minimum=1),
        stride=checks.as_tuple("stride", stride, n, minimum=1),
        padding=checks.as_tuple("padding", padding, n, minimum=0),
        dilation=checks.as_tuple("dilation", dilation, n, minimum=1),
        dilation_patch=checks.as_tuple("dilation_patch", dilation_patch, n, minimum=1),
    )
    if not torch.compiler.is_compiling():  # sizes are symbolic there: the operator checks them when it runs
        check_sizes(geometry)
    return geometry



def plan_geometry(
    geometry: Geometry,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    memory_budget: Any = None,
    requires_grad: bool = False,
    strategy: str | None = None,
    sink_cost: SinkCost | None = None,
) -> Plan:
    """:func:`tiledcorr.plan` for an already validated :class:`Geometry` (used by the shims).

    ``sink_cost``: a fused reduction's per-tile temporaries, counted against
    the budget (:mod:`tiledcorr.reduce`).
    """
    dtype = checks.check_dtype("dtype", dtype)
    device = checks.check_device("device", device)
    requires_grad = checks.check_bool("requires_grad", requires_grad)
    budget = quantized_budget(memory_budget, device)
    if strategy is not None:
        registry.get(strategy)  # an unknown name lists the valid ones
    return _cached_plan(geometry, dtype, device.type, budget, bool(requires_grad), strategy, sink_cost or SinkCost())


def quantized_budget(memory_budget: Any, device: torch.device) -> int:
    """Resolve the budget; derived budgets are rounded down to 1/8 of a power of two.

    Free memory changes between calls; rounding keeps the plan cache effective.
    """
    budget = resolve_budget(memory_budget, device)
    if is_relative(memory_budget):
        unit = 1 << max(0, budget.bit_length() - 4)
        budget = max(unit, budget // unit * unit)
    return budget



def plan_for_tiling(
    geometry: Geometry, tiling: Any, *, dtype: torch.dtype, device_type: str, budget_bytes: int, requires_grad: bool,
    sink_cost: SinkCost | None = None,
) -> Plan:
    """The :class:`Plan` of a given tiling (a user's plan, carried through an operator), every field checked.

    Raises:
        ArgumentValueError: an unknown strategy, one that refuses the problem,
            or tile sizes that are not positive ints, one per dimension.
        ArgumentTypeError: ``tiling`` is not a :class:`Tiling`.
    """
    check_tiling(tiling, geometry.ndim)
    strategy = registry.get(tiling.strategy)
    reason = strategy.refusal(geometry, dtype, device_type)
    if reason is not None:
        raise ArgumentValueError(f"plan's strategy {tiling.strategy!r} cannot run {_describe(geometry)}: {reason}")
    check_budget_bytes(budget_bytes)
    elem, out_elem = element_size(compute_dtype(dtype)), element_size(dtype)
    sink_cost = sink_cost or SinkCost()
    if geometry.no_tiles:
        return _empty_plan(geometry, dtype, device_type, budget_bytes, requires_grad, tiling, sink_cost)
    dims = TileDims.of_tiling(geometry, tiling)
    fwd_bytes, bwd_bytes = _workspace(strategy, dims, sink_cost, elem, _accumulator_bytes(geometry, dtype))
    fwd_s, bwd_s = _seconds(strategy, dims, device_model(device_type), elem)
    if not np.isfinite(fwd_s[0]):
        raise ArgumentValueError(f"plan's strategy {tiling.strategy!r} cannot run tiles of {tiling.tile} positions")
    return Plan(
        geometry=geometry, dtype=dtype, device_type=device_type, tiling=tiling, budget_bytes=budget_bytes,
        forward_workspace_bytes=int(fwd_bytes[0]), backward_workspace_bytes=int(bwd_bytes[0]),
        output_bytes=math.prod(geometry.out_shape) * out_elem, naive_bytes=_naive_bytes(geometry, out_elem),
        predicted_seconds=float(fwd_s[0] + (bwd_s[0] if requires_grad else 0.0)), requires_grad=requires_grad,
        sink_cost=sink_cost,
    )


def check_tiling(tiling: Any, ndim: int) -> None:
    """Check a (user's) tiling field by field: a :class:`Tiling` of a strategy name and positive ints.

    Python ints exactly (no bool, no float): the tiling is carried to the
    operators as text, and each size is a tile's extent.

    Raises:
        ArgumentTypeError: ``tiling`` is not a :class:`Tiling`, or its strategy is not a name.
        ArgumentValueError: a tile size that is not a positive int, or not one per dimension.
    """
    if not isinstance(tiling, Tiling):
        raise ArgumentTypeError(f"plan.tiling must be a tiledcorr Tiling, got {checks.show(tiling, typed=True)}")
    if not isinstance(tiling.strategy, str):
        raise ArgumentTypeError(f"plan.tiling.strategy must be a strategy name, got {checks.show(tiling.strategy, typed=True)}")
    if tiling.strategy not in registry.names():
        raise ArgumentValueError(f"plan.tiling.strategy must be one of {registry.names()}, got {tiling.strategy!r}")
    for name, value, length in (("batch_tile", (tiling.batch_tile,), 1), ("tile", tiling.tile, ndim),
                                ("disp_tile", tiling.disp_tile, ndim)):
        if (not isinstance(value, tuple) or len(value) != length
                or not all(type(v) is int and 1 <= v <= checks.INT64_MAX for v in value)):
            shown = value[0] if name == "batch_tile" and isinstance(value, tuple) and len(value) == 1 else value
            raise ArgumentValueError(
                f"plan.tiling.{name} must be {'a positive int' if length == 1 else f'{length} positive ints'}, "
                f"got {checks.show(shown)}; make plans with tiledcorr.plan()")


def check_budget_bytes(budget_bytes: Any) -> None:
    """A plan's ``budget_bytes``: a positive Python int (it is carried to the operators as text)."""
    if type(budget_bytes) is not int or budget_bytes < 1:
        raise ArgumentValueError(f"plan.budget_bytes must be a positive int, got {checks.show(budget_bytes, typed=True)}")


@functools.lru_cache(maxsize=512)
def _cached_plan(
    geometry: Geometry, dtype: torch.dtype, device_type: str, budget: int, requires_grad: bool, strategy: str | None,
    sink_cost: SinkCost = SinkCost(), per_tile: bool = False,  # noqa: B008 - frozen, hashable: a constant
) -> Plan:
    model = device_model(device_type)
    elem, out_elem = element_size(compute_dtype(dtype)), element_size(dtype)
    grads = _accumulator_bytes(geometry, dtype)
    grids = _candidate_grids(geometry, dtype, device_type, elem, model, strategy, per_tile)
    if geometry.no_tiles:
        N = geometry.ndim
        tiling = Tiling(grids[0].strategy.name, 1, (1,) * N, (1,) * N)
        return _empty_plan(geometry, dtype, device_type, budget, requires_grad, tiling, sink_cost)

    def score(grid: _CandidateGrid, rows: slice) -> tuple[np.ndarray, np.ndarray]:
        """Candidates ``rows`` of one strategy: the workspace they need and their seconds."""
        dims = grid.dims(geometry, rows)
        fwd_bytes, bwd_bytes = _workspace(grid.strategy, dims, sink_cost, elem, grads)
        fwd_s, bwd_s = _seconds(grid.strategy, dims, model, elem)
        need = np.maximum(fwd_bytes, bwd_bytes) if requires_grad else fwd_bytes
        return need, fwd_s + (bwd_s if requires_grad else 0.0)

    # Candidates are scored in chunks: the model's temporaries for all of them
    # at once (up to a few hundred thousand tilings, dozens of float64 arrays)
    # took 24-65 MiB, more than many plans' workspace, on the first call of a shape.
    total = sum(grid.count for grid in grids)
    need, seconds = np.empty(total), np.empty(total)
    owner = np.empty(total, dtype=np.int64)
    start = 0
    for i, grid in enumerate(grids):
        for first in range(0, grid.count, _CHUNK):
            rows = slice(first, min(grid.count, first + _CHUNK))
            at = slice(start + rows.start, start + rows.stop)
            need[at], seconds[at] = score(grid, rows)
        owner[start : start + grid.count] = i
        start += grid.count
    valid = np.isfinite(seconds)  # some strategies cannot run some tile shapes
    fits = valid & (need <= budget)
    if not fits.any():
        smallest = int(need[valid].min())
        raise MemoryBudgetError(
            f"memory_budget of {format_bytes(budget)} ({budget} bytes) is too small for "
            f"{_describe(geometry)}: the smallest tile (one displacement at one output "
            f"position) needs {format_bytes(smallest)} of workspace; pass memory_budget >= {smallest}",
            minimum_bytes=smallest,
        )
    best = seconds[fits].min()
    ok = np.flatnonzero(fits & (seconds <= best * EQUALLY_FAST))
    choice = int(ok[np.lexsort((seconds[ok], need[ok]))[0]])
    grid = grids[owner[choice]]
    offset = sum(g.count for g in grids[: owner[choice]])
    tiling = grid.tiling(choice - offset)
    fwd_bytes, bwd_bytes = _workspace(grid.strategy, TileDims.of_tiling(geometry, tiling), sink_cost, elem, grads)
    return Plan(
        geometry=geometry, dtype=dtype, device_type=device_type, tiling=tiling, budget_bytes=budget,
        forward_workspace_bytes=int(fwd_bytes[0]), backward_workspace_bytes=int(bwd_bytes[0]),
        output_bytes=math.prod(geometry.out_shape) * out_elem, naive_bytes=_naive_bytes(geometry, out_elem),
        predicted_seconds=float(seconds[choice]), requires_grad=requires_grad, sink_cost=sink_cost,
    )


def _empty_plan(geometry: Geometry, dtype: torch.dtype, device_type: str, budget: int, requires_grad: bool,
                tiling: Tiling, sink_cost: SinkCost) -> Plan:
    """The plan of a problem where no tile runs (B = 0 or an empty output): no workspace.

    The engine returns an empty result without running a tile, so such a
    problem fits any budget, whatever its parameters (a kernel larger than
    the image, of any size).
    """
    return Plan(
        geometry=geometry, dtype=dtype, device_type=device_type, tiling=tiling,
        budget_bytes=budget, forward_workspace_bytes=0, backward_workspace_bytes=0,
        output_bytes=math.prod(geometry.out_shape) * element_size(dtype), naive_bytes=_naive_bytes(geometry, element_size(dtype)),
        predicted_seconds=0.0, requires_grad=requires_grad, sink_cost=sink_cost,
    )


def _workspace(strategy: registry.Strategy, dims: TileDims, sink_cost: SinkCost, elem: int,
               grads: int) -> tuple[np.ndarray, np.ndarray]:
    """Bytes of the forward's and the backward's temporaries: the strategy's buffers, the sink's, the accumulators."""
    band, positions = dims.Bt * dims.Jp * dims.T, dims.Bt * dims.T
    forward = elem * total_elements(strategy.buffers(dims, False)) + sink_cost.bytes(band, positions, backward=False)
    backward = (elem * total_elements(strategy.buffers(dims, True)) + grads
                + sink_cost.bytes(band, positions, backward=True))
    return forward, backward


def _seconds(strategy: registry.Strategy, dims: TileDims, model: DeviceModel, elem: int) -> tuple[np.ndarray, np.ndarray]:
    """Predicted seconds of a whole forward and backward: the strategy's per-tile cost, times the tiles, plus overheads."""
    geometry = dims.geometry
    tiles, work = _tile_counts(geometry, dims)
    cost = strategy.cost(CostTerms(dims, model, elem))
    overhead = model.tile_overhead + model.copy_overhead * 2 * geometry.kernel_volume
    forward = (work * cost.forward + tiles * overhead) * cost.factor
    backward = (work * cost.backward + tiles * 2 * overhead) * cost.factor
    return forward, backward


def _tile_counts(geometry: Geometry, dims: TileDims) -> tuple[np.ndarray, np.ndarray]:
    """Tiles per call (per-tile overheads), and the work in units of full tiles.

    Along the last dimension a remainder tile counts by the share of a full
    tile's positions it covers: there tiles are narrow (16 wide), and charging
    MM-Tracker's 2-wide remainder (34 = 16 + 16 + 2) as a full tile picked one
    34-wide tile: 3.2 + 9.5 ms forward and backward against 2.6 + 7.5 ms
    (`python profiling/tilings.py mmtracker`).
    """
    N, U, J = geometry.ndim, dims.U, dims.J
    blocks = np.ones(len(dims))
    for d in range(N):
        # Closed form (Lattice.blocks): o = a*t + b, b classes of a + 1 positions and t - b of a.
        t, o = geometry.lattice(d).step, geometry.out_size[d]
        a, b = divmod(o, t)
        per_class = b * np.ceil((a + 1) / U[:, d]) + (t - b) * np.ceil(a / U[:, d])
        blocks *= per_class * np.ceil(geometry.patch[d] / J[:, d])
    last_share = o / U[:, N - 1] / np.maximum(per_class, 1)  # last dimension: positions / full tiles
    tiles = blocks * np.ceil(max(geometry.batch, 1) / dims.Bt)
    return tiles, tiles * last_share


def _naive_bytes(geometry: Geometry, out_elem: int) -> int:
    """The ``(B, C*kvol, P*P, oH, oW)`` tensor of windows the unfold approach builds."""
    g = geometry
    return g.batch * g.channels * g.kernel_volume * g.num_displacements * g.num_positions * out_elem


def _accumulator_bytes(geometry: Geometry, dtype: torch.dtype) -> int:
    """float32 gradient accumulators of half inputs (cast to the input dtype at the end)."""
    if compute_dtype(dtype) == dtype:
        return 0
    return 2 * geometry.batch * geometry.channels * math.prod(geometry.in_size) * 4


def _size_candidates(limit: int, cap: int) -> list[int]:
    """Tile sizes worth trying up to ``limit``: powers of two and even splits."""
    limit = max(1, limit)
    found = {1, limit} | {1 << i for i in range(limit.bit_length()) if 1 << i <= limit}
    found |= {-(-limit // n) for n in range(2, 9)}
    values = sorted(found)
    if len(values) > cap:  # keep the extremes and an even spread
        picks = np.unique(np.linspace(0, len(values) - 1, cap).round().astype(int))
        values = [values[i] for i in picks]
    return values


#: Candidate tilings scored at once (bounds the planner's own temporary memory).
_CHUNK = 8192


@dataclass(frozen=True)
class _CandidateGrid:
    """One strategy's candidate tilings: batch tile x positions x displacements, by flat index."""

    strategy: registry.Strategy
    axes: tuple[np.ndarray, ...]  # values along (Bt, *U, *J)

    @property
    def count(self) -> int:
        return math.prod(len(a) for a in self.axes)

    def _rows(self, flat: np.ndarray) -> np.ndarray:
        """The candidates' coordinates ``(Bt, *U, *J)``, one row each."""
        return np.stack([a[i] for a, i in zip(self.axes, np.unravel_index(flat, [len(a) for a in self.axes]))], axis=1)

    def dims(self, geometry: Geometry, rows: slice) -> TileDims:
        r = self._rows(np.arange(rows.start, rows.stop))
        N = geometry.ndim
        return TileDims(geometry, r[:, 0], r[:, 1 : 1 + N], r[:, 1 + N :])

    def tiling(self, i: int) -> Tiling:
        row = self._rows(np.array([i]))[0]
        N = (len(self.axes) - 1) // 2
        return Tiling(self.strategy.name, int(row[0]), tuple(int(v) for v in row[1 : 1 + N]), tuple(int(v) for v in row[1 + N :]))


def _candidate_grids(geometry: Geometry, dtype: torch.dtype, device_type: str, elem: int, model: DeviceModel,
                     only: str | None, per_tile: bool = False) -> list[_CandidateGrid]:
    """The candidates of every strategy that accepts the problem (or of ``only``; with ``per_tile``
    only strategies that the engine's loop runs tile by tile).

    Raises:
        ArgumentValueError: no strategy (or not ``only``) can run the problem;
            the message gives each one's reason.
    """
    refused = registry.refusals(geometry, dtype, device_type)
    if per_tile:
        refused.update({n: "runs a whole plan" for n in registry.names() if registry.get(n).runs_whole_plan})
    names = [only] if only else [n for n in registry.names() if n not in refused]
    if not names or names[0] in refused:
        reasons = "; ".join(f"{n}: {refused[n]}" for n in ([only] if only else refused))
        raise ArgumentValueError(f"no strategy can run {_describe(geometry)} ({dtype} on {device_type}): {reasons}")
    cap = 12 if geometry.ndim <= 2 else 5
    u_max = positions_per_dim(geometry)
    per_dim_u = [_size_candidates(u, cap) for u in u_max]
    # Column tiles run best in whole vectors (row_matmul's cost model): offer
    # the candidates rounded up to one too.
    lanes = model.lanes(elem)
    per_dim_u[-1] = sorted(set(per_dim_u[-1]) | {min(u_max[-1], -(-v // lanes) * lanes) for v in per_dim_u[-1]})
    per_dim_j = [_size_candidates(P, cap) for P in geometry.patch]
    batches = _size_candidates(max(1, geometry.batch), 6)
    axes = tuple(np.asarray(a, dtype=np.float64) for a in (batches, *per_dim_u, *per_dim_j))
    return [_CandidateGrid(registry.get(name), axes) for name in names]


def check_output_fits(plan_: Plan, device: torch.device) -> None:
    """Raise before allocating when the output alone exceeds the device's free memory."""
    free = free_memory(device)
    if plan_.output_bytes > free:
        raise MemoryBudgetError(
            f"the output {tuple(plan_.geometry.out_shape)} needs {format_bytes(plan_.output_bytes)} "
            f"but only {format_bytes(free)} is free on {device}; reduce the batch, the patch "
            "size or the image size, or use tiledcorr.correlate_reduce() to avoid storing the volume"
        )


def per_tile_plan(plan_: Plan) -> Plan:
    """``plan_``, or for a strategy that runs whole plans the plan among per-tile strategies for its budget.

    The exact NaN/Inf path combines tiles of several correlations, so it needs
    a strategy the engine runs tile by tile.
    """
    if not registry.get(plan_.strategy).runs_whole_plan:
        return plan_
    return _cached_plan(plan_.geometry, plan_.dtype, plan_.device_type, plan_.budget_bytes, plan_.requires_grad, None,
                        plan_.sink_cost, True)


def smaller_plan(plan_: Plan) -> Plan | None:
    """A plan with about half the workspace of ``plan_`` (for OOM retries), or None."""
    target = plan_.peak_workspace_bytes // 2
    if target < 1:
        return None
    try:
        return _cached_plan(plan_.geometry, plan_.dtype, plan_.device_type, target, plan_.requires_grad, None, plan_.sink_cost)
    except MemoryBudgetError:
        return None

