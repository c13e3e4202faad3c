"""Planning from shapes alone: memory model, cost model and :func:`plan`.

The planner enumerates tilings (strategy, batch tile, position tile and
displacement tile per dimension), predicts for each the workspace it
allocates (:func:`tiledcorr.engine.workspace_elements`, exact buffer sizes)
and the time it takes (a cost model of matmul efficiency, bytes moved and
per-tile overhead), keeps those that fit the budget and picks the fastest;
among plans within 5% of the fastest it picks the smallest, so a default call
does not hold gigabytes where a few hundred megabytes run as fast.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch

from . import checks
from .budget import format_bytes, free_memory, resolve_budget
from .engine import STRATEGIES, RowMatmul, Tiling, compute_dtype, stacked_padding, stacked_window_rows, workspace_elements
from .errors import ArgumentValueError, MemoryBudgetError, ShapeError
from .geometry import Geometry, count_spans

#: Plans within this factor of the fastest count as "about equally fast".
EQUALLY_FAST = 1.05


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


DEVICE_MODELS = {
    "cpu": DeviceModel(matmul_flops=1.0e11, bandwidth=4e9, tile_overhead=40e-6, copy_overhead=8e-6, half_size=8, gemm_overhead=3e-6, vector_bytes=64),
    "cuda": DeviceModel(matmul_flops=4.0e13, bandwidth=1.5e12, tile_overhead=60e-6, copy_overhead=10e-6, half_size=64, gemm_overhead=0.0, vector_bytes=0),
}


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


@dataclass(frozen=True)
class Plan:
    """An immutable execution plan for one correlation problem.

    Attributes:
        geometry: shapes and parameters the plan was made for.
        dtype: input dtype; ``compute_dtype`` is what sums accumulate in.
        device_type: ``"cpu"`` or ``"cuda"``.
        tiling: strategy and tile sizes (see :class:`tiledcorr.engine.Tiling`).
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
        """Raise if this plan was made for other shapes, parameters, dtype or device."""
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
    """Validate shapes and parameters and build the :class:`Geometry`."""
    shape1 = checks.check_shape("input1_shape", input1_shape)
    if input2_shape is not None and checks.check_shape("input2_shape", input2_shape) != shape1:
        raise ShapeError(f"input1 and input2 must have the same shape, got {shape1} and {tuple(input2_shape)}")
    n = len(shape1) - 2
    return Geometry(
        batch=shape1[0], channels=shape1[1], in_size=shape1[2:],
        kernel=checks.as_tuple("kernel_size", kernel_size, n, minimum=1),
        patch=checks.as_tuple("patch_size", patch_size, n, minimum=1),
        stride=checks.as_tuple("stride", stride, n, minimum=1),
        padding=checks.as_tuple("padding", padding, n, minimum=0),
        dilation=checks.as_tuple("dilation", dilation, n, minimum=1),
        dilation_patch=checks.as_tuple("dilation_patch", dilation_patch, n, minimum=1),
    )


def plan(
    input1_shape: Sequence[int],
    input2_shape: Sequence[int] | None = None,
    *,
    kernel_size=1, patch_size=1, stride=1, padding=0, dilation=1, dilation_patch=1,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    memory_budget: Any = None,
    requires_grad: bool = False,
    strategy: str | None = None,
    reduction: str | None = None,
    k: int | None = None,
) -> Plan:
    """Plan a correlation from shapes alone.

    Args:
        input1_shape: ``(B, C, H, W)`` (or ``(B, C, D, H, W)`` for volumes).
        input2_shape: must equal ``input1_shape``; ``None`` means the same.
        kernel_size, patch_size, stride, padding, dilation, dilation_patch: as
            in :func:`tiledcorr.correlate`.
        dtype: input dtype (half types are computed in float32).
        device: where it will run; a ``None`` or fractional budget is taken
            from that device's free memory.
        memory_budget: workspace budget, any form :func:`tiledcorr.budget.resolve_budget`
            accepts. The output itself is not counted (``Plan.output_bytes``).
        requires_grad: plan so that the backward fits the budget too.
        strategy: force one strategy of :data:`tiledcorr.engine.STRATEGIES`.
        reduction: plan the fused reduction :func:`tiledcorr.correlate_reduce`
            runs (``"max"``, ``"argmax"``, ``"softargmax"`` or ``"topk"``), its
            per-tile temporaries counted against the budget: the plan it makes
            itself for that budget. ``None``: the cost volume of :func:`tiledcorr.correlate`.
        k: the number of values ``"topk"`` keeps.

    Returns:
        The fastest :class:`Plan` that fits (see the module docstring).

    Raises:
        MemoryBudgetError: not even the smallest tile fits; the message states
            the smallest budget that works.
        ArgumentValueError: an unknown ``reduction``, a ``k`` it does not take,
            or ``requires_grad=True`` with ``"argmax"`` (which has no gradient).
    """
    geometry = make_geometry(input1_shape, input2_shape, kernel_size, patch_size, stride, padding, dilation, dilation_patch)
    sink_cost = None
    if reduction is not None or k is not None:
        from .reduce import reduction_cost  # the reductions build on the planner

        sink_cost = reduction_cost(reduction, k, geometry, checks.check_dtype("dtype", dtype), requires_grad)
    return plan_geometry(geometry, dtype=dtype, device=device, memory_budget=memory_budget, requires_grad=requires_grad,
                         strategy=strategy, sink_cost=sink_cost)


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
    """:func:`plan` for an already validated :class:`Geometry` (used by the shims).

    ``sink_cost``: a fused reduction's per-tile temporaries, counted against
    the budget (:mod:`tiledcorr.reduce`).
    """
    dtype = checks.check_dtype("dtype", dtype)
    device = checks.check_device("device", device)
    requires_grad = checks.check_bool("requires_grad", requires_grad)
    budget = _quantized_budget(memory_budget, device)
    if strategy is not None and strategy not in STRATEGIES:
        raise ArgumentValueError(f"strategy must be one of {sorted(STRATEGIES)}, got {checks.show(strategy)}")
    return _cached_plan(geometry, dtype, device.type, budget, bool(requires_grad), strategy, sink_cost or SinkCost())


def _quantized_budget(memory_budget: Any, device: torch.device) -> int:
    """Resolve the budget; derived budgets are rounded down to 1/8 of a power of two.

    Free memory changes between calls; rounding keeps the plan cache effective.
    """
    budget = resolve_budget(memory_budget, device)
    if memory_budget is None or isinstance(memory_budget, float):
        unit = 1 << max(0, budget.bit_length() - 4)
        budget = max(unit, budget // unit * unit)
    return budget


@functools.lru_cache(maxsize=512)
def _cached_plan(
    geometry: Geometry, dtype: torch.dtype, device_type: str, budget: int, requires_grad: bool, strategy: str | None,
    sink_cost: SinkCost = SinkCost(),
) -> Plan:
    model = DEVICE_MODELS.get(device_type, DEVICE_MODELS["cpu"])
    elem = torch.empty((), dtype=compute_dtype(dtype)).element_size()
    out_elem = torch.empty((), dtype=dtype).element_size()
    grads = _accumulator_bytes(geometry, dtype)
    # Candidates are scored in chunks: the model's temporaries for all of them
    # at once (up to a few hundred thousand tilings, dozens of float64 arrays)
    # took 24-65 MiB, more than many plans' workspace, on the first call of a shape.
    grid = _candidate_grid(geometry, elem, model, strategy)

    def score(rows: slice) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Candidates ``rows``: workspace needed, seconds, and the sink's bytes forward and backward."""
        cands = _candidates(geometry, elem, model, strategy, rows=rows, grid=grid)
        band, positions = cands["band_elements"], cands["position_elements"]
        fwd_sink, bwd_sink = sink_cost.bytes(band, positions, backward=False), sink_cost.bytes(band, positions, backward=True)
        fwd_bytes, bwd_bytes = cands["fwd_bytes"] + fwd_sink, cands["bwd_bytes"] + grads + bwd_sink
        need = np.maximum(fwd_bytes, bwd_bytes) if requires_grad else fwd_bytes
        return need, cands["fwd_s"] + (cands["bwd_s"] if requires_grad else 0.0), fwd_sink, bwd_sink

    need, seconds = np.empty(grid.count), np.empty(grid.count)
    for start in range(0, grid.count, _CHUNK):
        chunk = slice(start, min(grid.count, start + _CHUNK))
        need[chunk], seconds[chunk], _, _ = score(chunk)
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
    choice = ok[np.lexsort((seconds[ok], need[ok]))[0]]
    _, _, fwd_sink, bwd_sink = score(slice(int(choice), int(choice) + 1))
    tiling = grid.tiling(int(choice))
    naive = geometry.batch * geometry.channels * geometry.kernel_volume * geometry.num_displacements * geometry.num_positions * out_elem
    return Plan(
        geometry=geometry, dtype=dtype, device_type=device_type, tiling=tiling, budget_bytes=budget,
        forward_workspace_bytes=_workspace_bytes(geometry, tiling, elem, backward=False) + int(np.sum(fwd_sink)),
        backward_workspace_bytes=_workspace_bytes(geometry, tiling, elem, backward=True) + grads + int(np.sum(bwd_sink)),
        output_bytes=math.prod(geometry.out_shape) * out_elem, naive_bytes=naive,
        predicted_seconds=float(seconds[choice]), requires_grad=requires_grad, sink_cost=sink_cost,
    )


def _workspace_bytes(geometry: Geometry, tiling: Tiling, elem: int, *, backward: bool) -> int:
    return elem * sum(workspace_elements(geometry, tiling, backward=backward).values())


def _accumulator_bytes(geometry: Geometry, dtype: torch.dtype) -> int:
    """float32 gradient accumulators of half inputs (cast to the input dtype at the end)."""
    if compute_dtype(dtype) == dtype:
        return 0
    return 2 * geometry.batch * geometry.channels * math.prod(geometry.in_size) * 4


def _size_candidates(limit: int, cap: int) -> list[int]:
    """Tile sizes worth trying up to ``limit``: powers of two and even splits."""
    limit = max(1, limit)
    values = {1, limit} | {1 << i for i in range(limit.bit_length()) if 1 << i <= limit}
    values |= {-(-limit // n) for n in range(2, 9)}
    values = sorted(values)
    if len(values) > cap:  # keep the extremes and an even spread
        picks = np.unique(np.linspace(0, len(values) - 1, cap).round().astype(int))
        values = [values[i] for i in picks]
    return values


#: Candidate tilings scored at once (bounds the planner's own temporary memory).
_CHUNK = 8192

#: Time factor of row_matmul column tiles that are not whole vectors (measured 1.1-1.7x).
PARTIAL_VECTOR_COST = 1.5


def _lanes(model: DeviceModel, elem: int) -> int:
    """Elements per SIMD vector of the device model (1: no vector-width effect)."""
    return max(1, model.vector_bytes // elem)


@dataclass(frozen=True)
class _CandidateGrid:
    """The candidate tilings: every strategy x batch tile x positions x displacements, by flat index."""

    strategies: tuple[str, ...]
    axes: tuple[np.ndarray, ...]  # values along (strategy index, Bt, *U, *J)

    @property
    def count(self) -> int:
        return math.prod(len(a) for a in self.axes)

    def rows(self, flat: np.ndarray) -> np.ndarray:
        """The candidates' coordinates ``(strategy, Bt, *U, *J)``, one row each."""
        return np.stack([a[i] for a, i in zip(self.axes, np.unravel_index(flat, [len(a) for a in self.axes]))], axis=1)

    def tiling(self, i: int) -> Tiling:
        row = self.rows(np.array([i]))[0]
        N = (len(self.axes) - 2) // 2
        return Tiling(self.strategies[int(row[0])], int(row[1]), tuple(int(v) for v in row[2 : 2 + N]), tuple(int(v) for v in row[2 + N :]))


def _candidate_grid(geometry: Geometry, elem: int, model: DeviceModel, only: str | None) -> _CandidateGrid:
    N = geometry.ndim
    cap = 12 if N <= 2 else 5
    u_max = [max(1, -(-o // geometry.lattice(d).step)) for d, o in enumerate(geometry.out_size)]
    per_dim_u = [_size_candidates(u, cap) for u in u_max]
    # row_matmul's column tiles should be whole vectors (see _candidates): offer
    # the candidates rounded up to one too.
    lanes = _lanes(model, elem)
    per_dim_u[-1] = sorted(set(per_dim_u[-1]) | {min(u_max[-1], -(-v // lanes) * lanes) for v in per_dim_u[-1]})
    per_dim_j = [_size_candidates(P, cap) for P in geometry.patch]
    batches = _size_candidates(max(1, geometry.batch), 6)
    strategies = (only,) if only else tuple(STRATEGIES)
    axes = tuple(np.asarray(a, dtype=np.float64) for a in (np.arange(len(strategies)), batches, *per_dim_u, *per_dim_j))
    return _CandidateGrid(strategies, axes)


def _candidates(
    geometry: Geometry, elem: int, model: DeviceModel, only: str | None, rows: slice | None = None,
    grid: _CandidateGrid | None = None,
) -> dict[str, Any]:
    """Candidate tilings with their predicted workspace and time (vectorised).

    Args:
        rows: which candidates, as a slice of their flat index (default: all).
        grid: :func:`_candidate_grid` of the same arguments, if already made.

    Returns:
        ``tiling(i)`` (the tiling of candidate ``i``, a flat index), and for the
        candidates in ``rows`` the arrays ``fwd_bytes``, ``bwd_bytes``, ``fwd_s``,
        ``bwd_s``, ``band_elements``, ``position_elements``.
    """
    grid_ = grid or _candidate_grid(geometry, elem, model, only)
    N = geometry.ndim
    classes = [geometry.lattice(d).step for d in range(N)]
    u_max_last = max(1, -(-geometry.out_size[-1] // classes[-1]))
    lanes = _lanes(model, elem)
    strategies = grid_.strategies
    start, stop, _ = (rows or slice(None)).indices(grid_.count)
    grid = grid_.rows(np.arange(start, stop))
    s_idx, Bt = grid[:, 0], grid[:, 1]
    U, J = grid[:, 2 : 2 + N], grid[:, 2 + N : 2 + 2 * N]
    m = np.array([geometry.lattice(d).region_step for d in range(N)], dtype=np.float64)
    E = (U - 1) * m + J
    T, R, Jp = U.prod(1), E.prod(1), J.prod(1)
    K = float(max(1, geometry.kernel_volume * geometry.channels))  # C = 0: empty sums, no work
    kvol = geometry.kernel_volume

    # `tiles` counts the tiles (per-tile overheads). `work` counts them too,
    # except that along the last dimension a remainder tile counts by the share
    # of a full tile's positions it covers: there tiles are narrow (16 wide),
    # and charging MM-Tracker's 2-wide remainder (34 = 16 + 16 + 2) as a full
    # tile picked one 34-wide tile: 3.2 + 9.5 ms forward and backward against
    # 2.6 + 7.5 ms (`python profiling/tilings.py mmtracker`).
    blocks = np.ones(len(grid))
    for d in range(N):
        counts = [geometry.lattice(d).positions_per_class(geometry.out_size[d], r) for r in range(classes[d])]
        per_class = sum(np.ceil(n_r / U[:, d]) for n_r in counts)
        blocks *= per_class * np.ceil(geometry.patch[d] / J[:, d])
    last_share = sum(counts) / U[:, N - 1] / np.maximum(per_class, 1)  # last dimension: positions / full tiles
    tiles = blocks * np.ceil(max(geometry.batch, 1) / Bt)
    work = tiles * last_share

    eff = lambda x: x / (x + model.half_size)  # noqa: E731 - matmul efficiency of one dimension
    gather_bytes = 2 * elem * Bt * K * (T + R)
    band_bytes = 2 * elem * Bt * T * Jp
    overhead = model.tile_overhead + model.copy_overhead * 2 * kvol
    which = lambda name: s_idx == strategies.index(name) if name in strategies else np.zeros(len(grid), bool)  # noqa: E731
    is_mm, is_row = which("tile_matmul"), which("row_matmul")

    # Positions along the last dimension are the unit-stride runs of the band
    # and of the matmul's rows: a partial last vector is paid in full (below).
    whole_vectors = lambda n: n / (np.ceil(n / lanes) * lanes)  # noqa: E731
    mm_rate = model.matmul_flops * eff(T) * eff(R) * eff(K) * whole_vectors(U[:, N - 1])
    mm_fwd = 2 * Bt * T * R * K / mm_rate + (gather_bytes + band_bytes + elem * Bt * T * R) / model.bandwidth
    mm_bwd = 2 * (2 * Bt * T * R * K / mm_rate) + (2 * gather_bytes + 2 * band_bytes + 3 * elem * Bt * T * R) / model.bandwidth
    ew = 4 * elem * Bt * K * T / model.bandwidth + model.copy_overhead  # one elementwise pass
    sh_fwd = Jp * (ew + model.copy_overhead) + (gather_bytes + band_bytes) / model.bandwidth
    sh_bwd = 2 * Jp * (ew + model.copy_overhead) + (2 * gather_bytes + band_bytes) / model.bandwidth

    # row_matmul: U1 rows of positions (the bmm batch), each a (UN x K) @ (K x J1..J(N-1)*EN) matmul.
    rows, cols, width, lead_disp = U[:, 0], U[:, N - 1], E[:, N - 1], J[:, 0]
    columns = J[:, : N - 1].prod(1) * width
    Y_row = Bt * rows * cols * columns
    # The matmul's narrow dimension (UN positions) fills vectors of `lanes`
    # elements, and each row of the band is that many volume elements: column
    # tiles that are not whole vectors ran far slower than the model's flops
    # and bytes say (`python profiling/tilings.py`, development machine: a
    # patch-31 backward 144 ms with 13 columns against 114 ms with 16;
    # 4x128x96x96 patch 41, 871 ms with 14 against 572 ms with 16, and 8 to
    # 32 columns 1.1-1.7x the time of 16 in scratch runs). A partial
    # last vector is paid in full, and such tiles (other than the whole width)
    # cost 1.5x: still valid, for budgets that fit nothing wider.
    cols_eff = eff(cols) * whole_vectors(cols)
    partial_vectors = is_row & (cols % lanes != 0) & (cols < u_max_last)
    row_rate = model.matmul_flops * cols_eff * eff(columns) * eff(K)
    row_calls = Bt * rows * model.gemm_overhead
    row_fwd = 2 * Y_row * K / row_rate + row_calls + (gather_bytes + band_bytes) / model.bandwidth
    # Backward: input1's gradient is one bmm like the forward; input2's is one
    # bmm over stacked rows (2-D, m1 == 1: RowMatmul._grad2_stacked, whose
    # stacked operand is a view of the gradient's buffer, padded with zero
    # rows of positions) or one bmm per leading displacement.
    stacked = RowMatmul.stacked_grad2(geometry)
    x1_padded = Bt * K * (rows + 2 * (lead_disp - 1)) * cols
    Y_bwd = Y_row
    if stacked:
        # Only the window rows inside the tile are multiplied (engine.stacked_groups).
        pairs, inverse = np.unique(np.stack([rows, lead_disp], 1).astype(np.int64), axis=0, return_inverse=True)
        window_rows = np.array([stacked_window_rows(int(r), int(j)) for r, j in pairs], dtype=np.float64)[inverse.ravel()]
        padding = np.array([sum(stacked_padding(int(r), int(j))) for r, j in pairs], dtype=np.float64)[inverse.ravel()]
        Y_bwd = Bt * (rows + padding) * (cols * lead_disp * width + width)  # engine.stacked_gradient_elements
        Z_mm = Bt * window_rows * cols * width
        g2_s = 2 * Z_mm * K / (model.matmul_flops * eff(lead_disp * cols) * eff(width) * eff(K)) + Bt * E[:, 0] * model.gemm_overhead
        g2_bytes = elem * x1_padded
    else:
        g2_s = 2 * Y_row * K / (model.matmul_flops * cols_eff * eff(width) * eff(K)) + lead_disp * row_calls
        g2_bytes = 0.0
    row_bwd = (
        2 * Y_row * K / row_rate + row_calls + g2_s
        + (2 * gather_bytes + band_bytes + g2_bytes + elem * (Y_row + Bt * K * R)) / model.bandwidth
    )
    invalid = is_row & (U[:, 1 : N - 1] != 1).any(1)  # RowMatmul tiles a volume's middle dimension one by one

    fwd_s = work * np.select([is_mm, is_row], [mm_fwd, row_fwd], sh_fwd) + tiles * overhead
    bwd_s = work * np.select([is_mm, is_row], [mm_bwd, row_bwd], sh_bwd) + tiles * 2 * overhead
    fwd_s[partial_vectors] *= PARTIAL_VECTOR_COST
    bwd_s[partial_vectors] *= PARTIAL_VECTOR_COST
    fwd_s[invalid] = bwd_s[invalid] = np.inf
    # Buffer sizes, mirroring each strategy's ``buffers`` (checked by the tests).
    fwd_elems = np.select(
        [is_mm, is_row],
        [Bt * K * T + Bt * K * R + Bt * T * R, Bt * K * T + Bt * K * R + Y_row],
        2 * Bt * K * T + Bt * K * R + Bt * Jp * T,
    )
    bwd_elems = np.select(
        [is_mm, is_row],
        [2 * Bt * K * T + 2 * Bt * K * R + Bt * T * R, 2 * Bt * K * T + 2 * Bt * K * R + Y_bwd + (x1_padded if stacked else 0)],
        2 * Bt * K * T + 2 * Bt * K * R + Bt * Jp * T,
    )
    return {"tiling": grid_.tiling, "fwd_bytes": fwd_elems * elem, "bwd_bytes": bwd_elems * elem,
            "fwd_s": fwd_s, "bwd_s": bwd_s, "band_elements": Bt * Jp * T, "position_elements": Bt * T}


def check_output_fits(plan_: Plan, device: torch.device) -> None:
    """Raise before allocating when the output alone exceeds the device's free memory."""
    free = free_memory(device)
    if plan_.output_bytes > free:
        raise MemoryBudgetError(
            f"the output {tuple(plan_.geometry.out_shape)} needs {format_bytes(plan_.output_bytes)} "
            f"but only {format_bytes(free)} is free on {device}; reduce the batch, the patch "
            "size or the image size, or use tiledcorr.correlate_reduce() to avoid storing the volume"
        )


def smaller_plan(plan_: Plan) -> Plan | None:
    """A plan with about half the workspace of ``plan_`` (for OOM retries), or None."""
    target = plan_.peak_workspace_bytes // 2
    if target < 1:
        return None
    try:
        return _cached_plan(plan_.geometry, plan_.dtype, plan_.device_type, target, plan_.requires_grad, None, plan_.sink_cost)
    except MemoryBudgetError:
        return None
