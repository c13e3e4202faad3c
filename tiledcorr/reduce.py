"""Fused reductions over displacements: the max, argmax, soft-argmax or top-k of a cost volume, never stored.

:func:`correlate_reduce` runs the same plan as :func:`tiledcorr.correlate`,
but each tile's band of the volume, shape ``(Bt, *J, *U)`` (``J``
displacements of the tile per patch dimension, ``U`` output positions per
spatial dimension), goes to a *sink* that folds it into a running result of
size ``(B, *out_size)`` per statistic and lets it go. The volume, of size
``B * prod(patch) * prod(out_size)``, never exists; memory is the inputs, the
results, the plan's workspace and the sink's per-tile temporaries, which the
planner counts against the budget (:class:`tiledcorr.planner.SinkCost`).

Displacement indices are the flat, row-major index over ``patch_size``
(dy-major in 2-D), exactly as ``volume.flatten(1, N)``; ties go to the lowest
index, as ``torch.argmax`` over that flattened volume. A displacement in
pixels is ``(j - (P-1)//2) * dilation_patch`` per dimension, components in the
order of the spatial dimensions: ``(dy, dx)``, or ``(dz, dy, dx)`` for volumes.

Gradients: "max" and "topk" send each value's gradient to the displacement it
was selected from (no recomputation needed); "softargmax" recomputes each
tile's band in the backward and uses the softmax statistics (running max and
normaliser) saved by the forward. Both use :func:`tiledcorr.engine.run_backward`
with their own gradient source, so the backward holds one tile too.

Under ``torch.compile`` the same forward and backward run inside the custom
operators ``tiledcorr::correlate_reduce`` and ``tiledcorr::correlate_reduce_backward``
(as :mod:`tiledcorr.ops` does for the volume), so a compiled model has no
graph break at the call.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any, Callable, NamedTuple, Sequence

import torch
from torch import nn
from torch.autograd.function import once_differentiable

from . import checks, nonfinite, ops
from .autograd import backward_inputs, with_oom_retry
from .engine import Tile, compute_dtype, iter_tiles, run_forward, swap_band_order
from .errors import ArgumentTypeError, ArgumentValueError
from .geometry import Geometry, output_slice
from .planner import Plan, SinkCost, make_geometry
from .typing import BudgetLike, IntOrTuple, Normalize
from .volume import _repr_args, normalization_scale, prepare_inputs, resolve_plan

#: The valid ``reduction`` names.
REDUCTIONS = ("max", "argmax", "softargmax", "topk")

_INDEX_BYTES = 8  # int64 displacement indices
_BOOL_BYTES = 1


class TopK(NamedTuple):
    """Result of ``reduction="topk"``.

    Attributes:
        values: ``(B, k, *out_size)``, the ``k`` largest correlation values per
            position, descending; differentiable.
        displacements: ``(B, k, N, *out_size)`` int64, the displacement in
            pixels of each value (``N`` = 2: ``(dy, dx)``; 3: ``(dz, dy, dx)``).
    """

    values: torch.Tensor
    displacements: torch.Tensor


# --------------------------------------------------------------------------- indices


def _flat_strides(patch: tuple[int, ...]) -> list[int]:
    """Row-major strides of the flat displacement index over ``patch``."""
    return [math.prod(patch[d + 1 :]) for d in range(len(patch))]


def _tile_indices(geometry: Geometry, tile: Tile, device: torch.device) -> torch.Tensor:
    """Flat global displacement index of each of the tile's ``J`` displacements, ``(prod(J),)``.

    The tile's displacements are a rectangular block of the patch in row-major
    order, so the map is increasing: the first maximum within a tile is the
    one with the lowest global index.
    """
    index = torch.zeros((), dtype=torch.long, device=device)
    for d, span in enumerate(tile.spans):
        local = torch.arange(span.disp_start, span.disp_start + span.disp_count, device=device)
        index = index.unsqueeze(-1) * geometry.patch[d] + local
    return index.reshape(-1)


def _cached_tile_indices(cache: dict, geometry: Geometry, tile: Tile, device: torch.device) -> torch.Tensor:
    """:func:`_tile_indices`, computed once per displacement block (many tiles share one)."""
    key = tuple((s.disp_start, s.disp_count) for s in tile.spans)
    if key not in cache:
        cache[key] = _tile_indices(geometry, tile, device)
    return cache[key]


def _shift_table(geometry: Geometry, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``(prod(patch), N)``: the displacement in pixels of each flat index."""
    axes = [torch.tensor(geometry.shifts(d), dtype=dtype, device=device) for d in range(geometry.ndim)]
    grids = torch.meshgrid(*axes, indexing="ij")
    return torch.stack([g.reshape(-1) for g in grids], dim=1)


def index_to_displacement(geometry: Geometry, index: torch.Tensor, dim: int) -> torch.Tensor:
    """Flat displacement indices -> displacements in pixels, stacked at ``dim``.

    Args:
        geometry: the correlation's geometry.
        index: int64 tensor of any shape ``S``.
        dim: where the component axis goes in the result.

    Returns:
        int64 tensor of shape ``S`` with an axis of size ``N`` inserted at ``dim``.
    """
    strides = _flat_strides(geometry.patch)
    # Eagerly each component is computed in place in the result (no temporaries
    # of its size); out= is not traceable, so under the compiler they are stacked.
    compiling = torch.compiler.is_compiling()
    shape = list(index.shape)
    shape.insert(dim, geometry.ndim)
    out = None if compiling else torch.empty(shape, dtype=torch.long, device=index.device)
    parts = []
    for d in range(geometry.ndim):
        part = torch.div(index, strides[d], rounding_mode="floor") if compiling else torch.div(
            index, strides[d], rounding_mode="floor", out=out.select(dim, d))
        parts.append(part.remainder_(geometry.patch[d]).sub_(geometry.radius[d]).mul_(geometry.dilation_patch[d]))
    return torch.stack(parts, dim=dim) if compiling else out


def _positions(geometry: Geometry, tile: Tile, *lead: slice) -> tuple[slice, ...]:
    """Index of the tile's block in a ``(B, *lead, *out_size)`` tensor."""
    pos = tuple(output_slice(geometry, d, s) for d, s in enumerate(tile.spans))
    return (slice(tile.b0, tile.b1), *lead, *pos)


def _flat_band(band: torch.Tensor, ndim: int, dtype: torch.dtype) -> torch.Tensor:
    """A contiguous copy of the band in tile order, displacements flattened last: ``(Bt, *U, prod(J))``."""
    ordered = swap_band_order(band, ndim)
    flat = torch.empty(ordered.shape, dtype=dtype, device=band.device)
    flat.copy_(ordered)
    return flat.view(*ordered.shape[: 1 + ndim], -1)


# --------------------------------------------------------------------------- sinks


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
        return SinkCost(band=elem, position=elem + 2 * _INDEX_BYTES + 6 * _BOOL_BYTES, **_selection_backward_cost(elem, 1))

    def consume(self, tile: Tile, band: torch.Tensor) -> None:
        g = self.geometry
        flat = _flat_band(band, g.ndim, self.dtype)
        tile_max, local = flat.max(dim=-1)  # the first maximum: the lowest index of the tile
        del flat
        index = _cached_tile_indices(self._tile_index, g, tile, self.device)[local]
        del local
        best, best_index = self.values[_positions(g, tile)], self.index[_positions(g, tile)]
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
        return SinkCost(band=2 * elem + _BOOL_BYTES, position=k * (8 * elem + 12 * _INDEX_BYTES), **_selection_backward_cost(elem, k))

    def consume(self, tile: Tile, band: torch.Tensor) -> None:
        g, k = self.geometry, self.k
        flat = _flat_band(band, g.ndim, self.dtype)  # (Bt, *U, J)
        local = _top_indices(flat, min(k, flat.shape[-1]), nan_aware=self.nan_aware)
        top = flat.gather(-1, local)
        del flat
        top_index = _cached_tile_indices(self._tile_index, g, tile, self.device)[local]
        del local
        where = _positions(g, tile, slice(None))
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
        self.shifts = _shift_table(geometry, dtype, device)
        self._tile_index: dict[tuple, torch.Tensor] = {}

    @staticmethod
    def cost(elem: int, ndim: int) -> SinkCost:
        # forward: the scaled band, exponentiated in place; per position the tile
        # max, the new max, the shift (the new max, 0 where it is -inf) and its
        # mask, the rescaling factor, the tile's z and its N sums.
        # backward: the recomputed band (turned into probabilities in place) and
        # the weights; per position g.E and the N products g_c * E_c.
        return SinkCost(
            band=elem, position=(5 + ndim) * elem + _BOOL_BYTES,
            backward_band=2 * elem, backward_position=(2 + ndim) * elem,
        )

    def consume(self, tile: Tile, band: torch.Tensor) -> None:
        g, N = self.geometry, self.geometry.ndim
        ordered = swap_band_order(band, N)
        w = torch.empty(ordered.shape, dtype=self.dtype, device=band.device)
        torch.div(ordered, self.temperature, out=w)
        w = w.view(*ordered.shape[: 1 + N], -1)
        m_old = self.m[_positions(g, tile)]
        m_new = torch.maximum(m_old, w.amax(dim=-1))
        # While every value so far is -inf, subtract 0 instead (-inf - -inf is NaN):
        # the weights and the rescaling of the zero sums are then 0, as they should be.
        shift = m_new.masked_fill(m_new == -math.inf, 0.0)
        w.sub_(shift.unsqueeze(-1)).exp_()
        alpha = torch.sub(m_old, shift).exp_()
        self.z[_positions(g, tile)].mul_(alpha).add_(w.sum(dim=-1))
        shifts = self.shifts[_cached_tile_indices(self._tile_index, g, tile, self.device)]  # (J, N)
        s = self.s[_positions(g, tile, slice(None))]
        s.mul_(alpha.unsqueeze(1)).add_(torch.matmul(w, shifts).movedim(-1, 1))
        m_old.copy_(m_new)


# --------------------------------------------------------------------------- gradient sources


def _selection_backward_cost(elem: int, k: int) -> dict[str, int]:
    """Backward temporaries of :func:`_selection_grad`: the band gradient; per position and
    selected value, the gradient, the index arithmetic (int64) and the in-block masks."""
    return {"backward_band": elem, "backward_position": k * (2 * elem + 5 * _INDEX_BYTES + 3 * _BOOL_BYTES)}


def _selection_grad(geometry: Geometry, index: torch.Tensor, grad_values: torch.Tensor, dtype: torch.dtype) -> Callable:
    """Gradient source of selected values: each value's gradient goes to its displacement.

    Args:
        index: ``(B, k, *out_size)`` flat displacement indices of the selected values.
        grad_values: ``(B, k, *out_size)``, the gradient of those values.
        dtype: the compute dtype.
    """
    strides = _flat_strides(geometry.patch)

    def source(ctx: Any, tile: Tile) -> torch.Tensor:
        where = _positions(geometry, tile, slice(None))
        selected, grad = index[where], grad_values[where].to(dtype)  # (Bt, k, *U)
        local = torch.zeros_like(selected)
        inside = torch.ones_like(selected, dtype=torch.bool)
        for d, span in enumerate(tile.spans):
            j = selected // strides[d] % geometry.patch[d] - span.disp_start
            inside &= (j >= 0) & (j < span.disp_count)
            local.mul_(span.disp_count).add_(j)
        out = torch.zeros((tile.batch, math.prod(tile.displacements), *tile.positions), dtype=dtype, device=grad.device)
        # Values selected outside the tile add 0 at local index 0 (masked, so a NaN gradient cannot leak).
        out.scatter_add_(1, local.masked_fill_(~inside, 0), grad.masked_fill(~inside, 0))
        return out.view(tile.batch, *tile.displacements, *tile.positions)

    return source


def _selection_classes(grad_values: torch.Tensor) -> Callable[[str], bool]:
    """Which value classes a selection's band gradients hold: zero, and those of ``grad_values``.

    Lets the exact NaN/Inf backward skip the pairs that cannot occur
    (:func:`tiledcorr.nonfinite.run_backward`); evaluated only on that path.
    """
    classes = nonfinite.Indicators(grad_values)
    return lambda name: name == "zero" or classes.present(name)


def _softargmax_grad(
    geometry: Geometry, m: torch.Tensor, z: torch.Tensor, expectation: torch.Tensor, grad: torch.Tensor, temperature: float,
) -> Callable:
    """Gradient source of the soft-argmax ``E = sum_j p_j d_j``.

    ``dE_c/dv_j = p_j (d_jc - E_c) / T`` with ``p_j = exp(v_j/T - m) / z``
    from the forward's final ``m`` and ``z``, so the band gradient is
    ``p_j * sum_c g_c (d_jc - E_c) / T``.

    Args:
        m, z: ``(B, *out_size)``, the final running max and normaliser.
        expectation: ``(B, N, *out_size)``, the result ``E``.
        grad: ``(B, N, *out_size)``, the gradient of ``E``.
    """
    N = geometry.ndim
    dtype = m.dtype

    def source(ctx: Any, tile: Tile) -> torch.Tensor:
        p = ctx.recompute_band(tile)  # (Bt, *J, *U), a new tensor we may overwrite
        over_j = (slice(None), *(None,) * N)  # broadcast (Bt, *U) over the J axes
        p.div_(temperature).sub_(m[_positions(geometry, tile)][over_j]).exp_().div_(z[_positions(geometry, tile)][over_j])
        g = grad[_positions(geometry, tile, slice(None))].to(dtype)  # (Bt, N, *U)
        e = expectation[_positions(geometry, tile, slice(None))].to(dtype)
        weight = torch.empty_like(p)
        weight.copy_((g * e).sum(dim=1).neg_()[over_j])
        for c, span in enumerate(tile.spans):
            shift = torch.tensor(geometry.shifts(c)[span.disp_start : span.disp_start + span.disp_count], dtype=dtype, device=p.device)
            along_c = [1] * (1 + 2 * N)
            along_c[1 + c] = span.disp_count
            weight.addcmul_(shift.view(along_c), g[:, c][over_j])
        return p.mul_(weight).div_(temperature)

    return source


# --------------------------------------------------------------------------- execution


def _run_sink(input1: torch.Tensor, input2: torch.Tensor, plan: Plan, scale: float, make_sink: Callable[[bool], Any]):
    """Run the plan into a fresh sink (fresh again on an out-of-memory retry) and return it.

    ``make_sink(nan_aware)`` builds the sink; ``nan_aware`` is set when the
    inputs hold NaN or Inf (the exact path), for sinks whose order depends on it.
    """
    g = plan.geometry
    finite = g.channels == 0 or nonfinite.all_finite(input1, input2)

    def attempt(p: Plan):
        sink = make_sink(not finite)
        if g.channels == 0:
            # Sums over no channels: the volume is 0 everywhere (the engine needs C > 0).
            for tile in iter_tiles(g, p.tiling):
                sink.consume(tile, input1.new_zeros((tile.batch, *tile.displacements, *tile.positions), dtype=sink.dtype))
        elif finite:
            run_forward(input1, input2, g, p.tiling, sink, scale=scale)
        else:  # zero padding is not exact for NaN and Inf
            nonfinite.run_forward(input1, input2, p, sink, scale=scale)
        return sink

    return with_oom_retry(plan, attempt)


def _make_sink(reduction: str, plan: Plan, device: torch.device, k: int | None, temperature: float) -> Callable[[bool], Any]:
    """A factory ``make(nan_aware)`` of fresh sinks of ``reduction`` for ``plan`` (one per attempt of :func:`_run_sink`)."""
    g, dtype = plan.geometry, plan.compute_dtype
    if reduction in ("max", "argmax"):
        return lambda nan_aware: MaxSink(g, dtype, device)
    if reduction == "topk":
        return lambda nan_aware: TopKSink(g, dtype, device, k, nan_aware=nan_aware)
    return lambda nan_aware: SoftArgmaxSink(g, dtype, device, temperature)


def reduction_cost(reduction: Any, k: Any, geometry: Geometry, dtype: torch.dtype, requires_grad: Any) -> SinkCost:
    """What ``tiledcorr.plan(reduction=..., k=...)`` counts, validated as :func:`correlate_reduce` does."""
    if reduction is None:
        raise ArgumentValueError(f"k is only used with reduction='topk', got k={checks.show(k)} and no reduction")
    reduction = _check_reduction(reduction)
    k = _check_k(k, reduction, geometry.num_displacements)
    if reduction == "argmax" and checks.check_bool("requires_grad", requires_grad):
        raise ArgumentValueError(
            "requires_grad=True with reduction='argmax': argmax has no gradient (its results are integer "
            "displacements), so correlate_reduce plans its forward only; plan with requires_grad=False (without --backward "
            "on the command line)"
        )
    return sink_cost(reduction, k, geometry.ndim, dtype)


def sink_cost(reduction: str, k: int | None, ndim: int, dtype: torch.dtype) -> SinkCost:
    """The per-tile temporaries of a reduction (see :class:`tiledcorr.planner.SinkCost`)."""
    elem = torch.empty((), dtype=compute_dtype(dtype)).element_size()
    if reduction in ("max", "argmax"):
        return MaxSink.cost(elem)
    if reduction == "topk":
        return TopKSink.cost(elem, k)
    return SoftArgmaxSink.cost(elem, ndim)


class SelectFunction(torch.autograd.Function):
    """``(input1, input2, plan, scale, make_sink) -> (values, index)``, both ``(B, k, *out_size)``.

    ``make_sink`` builds a :class:`MaxSink` (``k = 1``) or a :class:`TopKSink`.
    Differentiable once in both inputs through ``values``; ``index`` (int64) is not.
    """

    @staticmethod
    def forward(input1: torch.Tensor, input2: torch.Tensor, plan: Plan, scale: float, make_sink: Callable):
        values, index = _run_sink(input1, input2, plan, scale, make_sink).selection()
        return values.to(input1.dtype), index

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: tuple) -> None:
        input1, input2, plan, scale, _ = inputs
        ctx.save_for_backward(input1, input2, output[1])
        ctx.mark_non_differentiable(output[1])
        ctx.set_materialize_grads(False)  # no zeros the size of the int64 index
        ctx.plan, ctx.scale = plan, scale

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_values: torch.Tensor, _grad_index: Any):
        input1, input2, index = ctx.saved_tensors
        need1, need2 = ctx.needs_input_grad[:2]
        if grad_values is None or not (need1 or need2):
            return None, None, None, None, None
        source = _selection_grad(ctx.plan.geometry, index, grad_values, ctx.plan.compute_dtype)
        grad1, grad2 = backward_inputs(input1, input2, source, ctx.plan, ctx.scale, need1, need2, upstream=grad_values,
                                       upstream_present=_selection_classes(grad_values))
        return grad1, grad2, None, None, None


class SoftArgmaxFunction(torch.autograd.Function):
    """``(input1, input2, plan, scale, temperature) -> (E, m, z)``.

    ``E`` ``(B, N, *out_size)`` is the soft-argmax, in the input dtype and
    differentiable once in both inputs; ``m`` and ``z`` ``(B, *out_size)``
    (compute dtype, not differentiable) are the softmax statistics the
    backward needs, returned so that autograd saves them.
    """

    @staticmethod
    def forward(input1: torch.Tensor, input2: torch.Tensor, plan: Plan, scale: float, temperature: float):
        sink = _run_sink(input1, input2, plan, scale, _make_sink("softargmax", plan, input1.device, None, temperature))
        expectation = sink.s.div_(sink.z.unsqueeze(1))
        return expectation.to(input1.dtype), sink.m, sink.z

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: tuple) -> None:
        input1, input2, plan, scale, temperature = inputs
        expectation, m, z = output
        ctx.save_for_backward(input1, input2, expectation, m, z)
        ctx.mark_non_differentiable(m, z)
        ctx.set_materialize_grads(False)
        ctx.plan, ctx.scale, ctx.temperature = plan, scale, temperature

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: torch.Tensor, _grad_m: Any, _grad_z: Any):
        input1, input2, expectation, m, z = ctx.saved_tensors
        need1, need2 = ctx.needs_input_grad[:2]
        if grad is None or not (need1 or need2):
            return None, None, None, None, None
        source = _softargmax_grad(ctx.plan.geometry, m, z, expectation, grad, ctx.temperature)
        grad1, grad2 = backward_inputs(input1, input2, source, ctx.plan, ctx.scale, need1, need2, upstream=grad)
        return grad1, grad2, None, None, None


# --------------------------------------------------------------------------- custom operators


def _op_plan(input1: torch.Tensor, geometry: Geometry, budget: str, reduction: str, k: int | None, backward: bool) -> Plan:
    return ops.plan_at_run_time(input1, geometry, budget, backward, sink_cost(reduction, k, geometry.ndim, input1.dtype))


@torch.library.custom_op("tiledcorr::correlate_reduce", mutates_args=())
def correlate_reduce_op(
    input1: torch.Tensor, input2: torch.Tensor, kernel: Sequence[int], patch: Sequence[int], stride: Sequence[int],
    padding: Sequence[int], dilation: Sequence[int], dilation_patch: Sequence[int], out_limit: Sequence[int],
    scale: float, budget: str, reduction: str, k: int, temperature: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A fused reduction for ``torch.compile``: ``(values, index, unused)`` or, for "softargmax", ``(E, m, z)``.

    The arguments are those of ``tiledcorr::correlate`` (:mod:`tiledcorr.ops`)
    plus the reduction, ``k`` (0 for none) and the temperature; like that
    operator it plans at run time, the forward for the forward alone. The
    selections are ``(B, k, *out_size)`` (values in the input dtype, int64
    flat indices); the soft-argmax gives ``E`` ``(B, N, *out_size)`` and its
    softmax statistics ``(B, *out_size)`` for the backward.
    """
    geometry = ops.geometry_of(input1.shape, kernel, patch, stride, padding, dilation, dilation_patch, out_limit)
    plan = _op_plan(input1, geometry, budget, reduction, k or None, backward=False)
    if reduction == "softargmax":
        expectation, m, z = SoftArgmaxFunction.forward(input1, input2, plan, scale, temperature)
        return expectation, m, z
    values, index = SelectFunction.forward(input1, input2, plan, scale, _make_sink(reduction, plan, input1.device, k or None, temperature))
    return values, index, values.new_empty(0)


@correlate_reduce_op.register_fake
def _correlate_reduce_fake(input1, input2, kernel, patch, stride, padding, dilation, dilation_patch, out_limit, scale,
                           budget, reduction, k, temperature):
    geometry = ops.geometry_of(input1.shape, kernel, patch, stride, padding, dilation, dilation_patch, out_limit)
    positions = (geometry.batch, *geometry.out_size)
    if reduction == "softargmax":
        stats = input1.new_empty(positions, dtype=compute_dtype(input1.dtype))
        return input1.new_empty((geometry.batch, geometry.ndim, *geometry.out_size)), stats, stats.clone()
    selected = (geometry.batch, k or 1, *geometry.out_size)
    return input1.new_empty(selected), input1.new_empty(selected, dtype=torch.long), input1.new_empty(0)


@torch.library.custom_op("tiledcorr::correlate_reduce_backward", mutates_args=())
def correlate_reduce_backward_op(
    grad: torch.Tensor, input1: torch.Tensor, input2: torch.Tensor, result: torch.Tensor, index_or_max: torch.Tensor,
    normaliser: torch.Tensor, kernel: Sequence[int], patch: Sequence[int], stride: Sequence[int], padding: Sequence[int],
    dilation: Sequence[int], dilation_patch: Sequence[int], out_limit: Sequence[int], scale: float, budget: str,
    reduction: str, k: int, temperature: float, need1: bool, need2: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Both input gradients of :func:`correlate_reduce_op` from the gradient of its first result (empty: not needed).

    ``result, index_or_max, normaliser`` are the forward operator's three
    results: the selected values, their flat indices and an unused empty
    tensor, or the soft-argmax ``E`` and its statistics ``m`` and ``z``.
    """
    geometry = ops.geometry_of(input1.shape, kernel, patch, stride, padding, dilation, dilation_patch, out_limit)
    plan = _op_plan(input1, geometry, budget, reduction, k or None, backward=True)
    present = None
    if reduction == "softargmax":
        source = _softargmax_grad(geometry, index_or_max, normaliser, result, grad, temperature)
    else:
        source, present = _selection_grad(geometry, index_or_max, grad, plan.compute_dtype), _selection_classes(grad)
    return ops.input_grads_or_empty(input1, input2, *backward_inputs(
        input1, input2, source, plan, scale, need1, need2, upstream=grad, upstream_present=present))


@correlate_reduce_backward_op.register_fake
def _correlate_reduce_backward_fake(grad, input1, input2, result, index_or_max, normaliser, kernel, patch, stride, padding,
                                    dilation, dilation_patch, out_limit, scale, budget, reduction, k, temperature, need1,
                                    need2):
    return ops.input_grads_fake(input1, input2, need1, need2)


ops.register_backward(correlate_reduce_op, torch.ops.tiledcorr.correlate_reduce_backward, save_results=True)


@torch.compiler.disable
def _reduce_eager(input1, input2, geometry: Geometry, scale: float, memory_budget, plan: Plan | None, reduction: str,
                  k: int | None, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(values, index)``, or ``(E, None)`` for "softargmax", through the autograd Functions."""
    plan = resolve_plan(geometry, input1, input2, memory_budget, plan, sink_cost=sink_cost(reduction, k, geometry.ndim, input1.dtype))
    if reduction == "softargmax":
        return SoftArgmaxFunction.apply(input1, input2, plan, scale, temperature)[0], None
    return SelectFunction.apply(input1, input2, plan, scale, _make_sink(reduction, plan, input1.device, k, temperature))


# --------------------------------------------------------------------------- public API


def _check_reduction(reduction: Any) -> str:
    if not isinstance(reduction, str):
        raise ArgumentTypeError(f"reduction must be a str, one of {REDUCTIONS}, got {checks.show(reduction)}")
    if reduction not in REDUCTIONS:
        raise ArgumentValueError(f"reduction must be one of {REDUCTIONS}, got {checks.show(reduction)}")
    return reduction


def _check_k(k: Any, reduction: str, num_displacements: int) -> int | None:
    if reduction != "topk":
        if k is not None:
            raise ArgumentValueError(f"k is only used by reduction='topk', got k={checks.show(k)} with reduction={checks.show(reduction)}")
        return None
    if k is None:
        raise ArgumentValueError("reduction='topk' needs k, the number of values to keep per position")
    k = checks.check_int("k", k, minimum=1)
    if k > num_displacements:
        raise ArgumentValueError(f"k must be <= the number of displacements ({num_displacements}), got k={k}")
    return k


def _check_temperature(temperature: Any) -> float:
    temperature = checks.check_real("temperature", temperature)
    if temperature <= 0:
        raise ArgumentValueError(f"temperature must be > 0, got {checks.show(temperature)}")
    return temperature


def correlate_reduce(
    input1: torch.Tensor,
    input2: torch.Tensor,
    kernel_size: IntOrTuple = 1,
    patch_size: IntOrTuple = 1,
    stride: IntOrTuple = 1,
    padding: IntOrTuple = 0,
    dilation: IntOrTuple = 1,
    dilation_patch: IntOrTuple = 1,
    *,
    reduction: str,
    k: int | None = None,
    temperature: float = 1.0,
    normalize: Normalize = None,
    memory_budget: BudgetLike = None,
    plan: Plan | None = None,
) -> torch.Tensor | TopK:
    """A reduction over the displacements of :func:`tiledcorr.correlate`, without storing the volume.

    Equals the same reduction of ``v = correlate(...).flatten(1, N)``
    (``(B, prod(patch), *out_size)``, ``N`` spatial dimensions) wherever that
    fits in memory, but holds one tile of ``v`` at a time. ``d(j)`` below is
    the displacement in pixels of flat index ``j``: per dimension
    ``(j_d - (P_d - 1)//2) * dilation_patch_d``, components ``(dy, dx)``
    (``(dz, dy, dx)`` for volumes). Ties go to the lowest index ``j``.

    * ``"max"``: ``v.amax(1)``, shape ``(B, *out_size)``; differentiable (the
      gradient goes to the argmax, as ``v.max(1).values``).
    * ``"argmax"``: ``d(v.argmax(1))``, shape ``(B, N, *out_size)``, int64.
    * ``"softargmax"``: ``sum_j softmax(v / temperature, 1)[:, j] * d(j)``,
      shape ``(B, N, *out_size)``, input dtype, differentiable. Combined across
      tiles with a running max and normaliser (online softmax): never overflows.
    * ``"topk"``: :class:`TopK` ``(values (B, k, *out_size), displacements
      (B, k, N, *out_size) int64)``, values descending as ``v.topk(k, 1)``
      (ties to the lower index); the values are differentiable.

    Args:
        input1: tensor of shape ``(B, C, H, W)`` (or ``(B, C, D, H, W)``).
        input2: tensor of the same shape, dtype and device.
        kernel_size, patch_size, stride, padding, dilation, dilation_patch:
            as in :func:`tiledcorr.correlate`.
        reduction: one of :data:`REDUCTIONS`.
        k: number of values per position for ``"topk"`` (``1 <= k <= prod(patch)``);
            must be ``None`` otherwise.
        temperature: softmax temperature of ``"softargmax"`` (finite, > 0).
        normalize: scaling of the sums, as in :func:`tiledcorr.correlate`
            (before the temperature).
        memory_budget: bound on the temporaries: the engine's workspace plus the
            reduction's per-tile temporaries (the inputs and the results, of size
            ``(B, *out_size)`` per statistic, are not counted). Same forms as
            :func:`tiledcorr.correlate`.
        plan: a ready :class:`tiledcorr.Plan` for these shapes (overrides
            ``memory_budget``); its tiling is used as is. A plan from
            ``tiledcorr.plan(..., reduction=reduction, k=k)`` is the one this
            call makes for that budget; a plan made without ``reduction``, or
            for another reduction or ``k``, did not count this reduction's
            temporaries, so its budget does not cover them.

    Returns:
        A tensor (``"max"``, ``"argmax"``, ``"softargmax"``) or a :class:`TopK`.

    Raises:
        ShapeError, ArgumentTypeError, ArgumentValueError, DeviceError: bad input,
            an unknown ``reduction``, ``k`` out of range, a ``temperature`` <= 0.
        MemoryBudgetError: no tiling fits ``memory_budget``.

    Example:
        >>> x1, x2 = torch.randn(1, 32, 40, 40), torch.randn(1, 32, 40, 40)
        >>> correlate_reduce(x1, x2, patch_size=21, reduction="argmax").shape
        torch.Size([1, 2, 40, 40])
        >>> correlate_reduce(x1, x2, patch_size=21, reduction="topk", k=4).displacements.shape
        torch.Size([1, 4, 2, 40, 40])
    """
    reduction = _check_reduction(reduction)
    temperature = _check_temperature(temperature)
    input1, input2 = prepare_inputs(input1, input2)
    geometry = make_geometry(input1.shape, input2.shape, kernel_size, patch_size, stride, padding, dilation, dilation_patch)
    k = _check_k(k, reduction, geometry.num_displacements)
    scale = normalization_scale(normalize, geometry.channels, geometry.kernel_volume)
    budget = ops.encode_budget(memory_budget)
    # argmax has no gradient: plan (and run) the forward only.
    grad_mode = torch.no_grad() if reduction == "argmax" else contextlib.nullcontext()
    with grad_mode, torch.autocast(input1.device.type, enabled=False):
        if torch.compiler.is_compiling() and plan is None and budget is not None:
            values, index, _ = torch.ops.tiledcorr.correlate_reduce(
                input1, input2, *ops.geometry_args(geometry), float(scale), budget, reduction, k or 0, float(temperature))
        else:
            values, index = _reduce_eager(input1, input2, geometry, scale, memory_budget, plan, reduction, k, temperature)
    if reduction == "softargmax":
        return values
    if reduction == "max":
        return values.squeeze(1)
    if reduction == "argmax":
        return index_to_displacement(geometry, index.squeeze(1), dim=1)
    return TopK(values, index_to_displacement(geometry, index, dim=2))


class CorrelationReduce(nn.Module):
    """Module twin of :func:`correlate_reduce`; see the function for the arguments.

    Shape:
        - input1, input2: ``(B, C, H, W)`` (or ``(B, C, D, H, W)``)
        - output: ``"max"``: ``(B, *out)``; ``"argmax"``, ``"softargmax"``:
          ``(B, N, *out)``; ``"topk"``: :class:`TopK` of ``(B, k, *out)`` and
          ``(B, k, N, *out)``

    Example:
        >>> layer = CorrelationReduce(patch_size=9, reduction="softargmax", temperature=0.1, normalize="channels")
        >>> layer(torch.randn(1, 32, 19, 34), torch.randn(1, 32, 19, 34)).shape
        torch.Size([1, 2, 19, 34])
    """

    _ARGS = (
        "kernel_size", "patch_size", "stride", "padding", "dilation", "dilation_patch", "reduction", "k",
        "temperature", "normalize", "memory_budget",
    )
    _DEFAULTS = dict(
        kernel_size=1, patch_size=1, stride=1, padding=0, dilation=1, dilation_patch=1, k=None, temperature=1.0,
        normalize=None, memory_budget=None,
    )

    def __init__(
        self, kernel_size: IntOrTuple = 1, patch_size: IntOrTuple = 1, stride: IntOrTuple = 1,
        padding: IntOrTuple = 0, dilation: IntOrTuple = 1, dilation_patch: IntOrTuple = 1, *,
        reduction: str, k: int | None = None, temperature: float = 1.0, normalize: Normalize = None,
        memory_budget: BudgetLike = None,
    ) -> None:
        super().__init__()
        self.kernel_size, self.patch_size, self.stride = kernel_size, patch_size, stride
        self.padding, self.dilation, self.dilation_patch = padding, dilation, dilation_patch
        self.reduction, self.k, self.temperature = _check_reduction(reduction), k, _check_temperature(temperature)
        self.normalize, self.memory_budget = normalize, memory_budget

    def forward(self, input1: torch.Tensor, input2: torch.Tensor) -> torch.Tensor | TopK:
        return correlate_reduce(
            input1, input2, self.kernel_size, self.patch_size, self.stride, self.padding, self.dilation,
            self.dilation_patch, reduction=self.reduction, k=self.k, temperature=self.temperature,
            normalize=self.normalize, memory_budget=self.memory_budget,
        )

    def extra_repr(self) -> str:
        return _repr_args(self, self._ARGS, self._DEFAULTS)
