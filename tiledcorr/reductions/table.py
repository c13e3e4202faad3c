"""The fused reductions as data: one :class:`Reduction` per name describes everything the rest needs.

Each entry gives its sink (how a tile's band is folded into the running
result), the per-tile temporaries it declares to the planner, the three
tensors its custom operator returns (and their fake shapes for the
compiler), its gradient source (``None``: no gradient), and the public
result built from those tensors. The operator, the planner and the public
function all read this table; nothing dispatches on a reduction's name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, NamedTuple, Protocol, TypedDict

import torch

from ..checks import show
from ..dtypes import compute_dtype, element_size
from ..errors import ArgumentTypeError, ArgumentValueError
from ..execution.sinks import GradSource, Sink
from ..geometry import Geometry
from ..planning.costs import SinkCost
from .grads import selection_classes, selection_grad, softargmax_grad
from .indices import index_to_displacement
from .sinks import MaxSink, SoftArgmaxSink, TopKSink

Results = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


class ReductionSink(Sink, Protocol):
    """A reduction's sink: it folds bands into a running result kept in ``dtype`` (the compute dtype)."""

    dtype: torch.dtype


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


@dataclass(frozen=True)
class Reduction:
    """One fused reduction over the displacements.

    Attributes:
        name: the ``reduction=`` value.
        takes_k: whether it keeps ``k`` values per position (needs ``k``).
        make_sink: ``(geometry, compute dtype, device, k, temperature, nan_aware) -> Sink``.
        cost: ``(bytes per compute element, k, ndim) -> SinkCost``, its per-tile temporaries.
        finish: ``(sink, input dtype) -> results``: the operator's three tensors.
        fake: ``(geometry, input1, k) -> results`` of the right shapes and dtypes.
        grad_source: ``(geometry, results, grad, temperature, compute dtype) ->
            (source, present)``, the band gradients from the gradient of the
            first result and which value classes they can hold (``None``: any);
            ``None`` for a reduction without a gradient.
        result: ``(geometry, results) ->`` what :func:`tiledcorr.correlate_reduce` returns.
    """

    name: str
    takes_k: bool
    make_sink: Callable[[Geometry, torch.dtype, torch.device, Any, float, bool], ReductionSink]
    cost: Callable[[int, Any, int], SinkCost]
    finish: Callable[[Any, torch.dtype], Results]
    fake: Callable[[Geometry, torch.Tensor, int], Results]
    grad_source: Callable[[Geometry, Results, torch.Tensor, float, torch.dtype], tuple[GradSource, Any]] | None
    result: Callable[[Geometry, Results], Any]

    @property
    def differentiable(self) -> bool:
        return self.grad_source is not None


def _selected(sink: Any, dtype: torch.dtype) -> Results:
    values, index = sink.selection()
    return values.to(dtype), index, values.new_empty(0)


def _selected_fake(geometry: Geometry, input1: torch.Tensor, k: int) -> Results:
    shape = (geometry.batch, k or 1, *geometry.out_size)
    return input1.new_empty(shape), input1.new_empty(shape, dtype=torch.long), input1.new_empty(0)


def _selection_source(geometry: Geometry, results: Results, grad: torch.Tensor, temperature: float,
                      dtype: torch.dtype) -> tuple[GradSource, Any]:
    return selection_grad(geometry, results[1], grad, dtype), selection_classes(grad)


def _softargmax_finish(sink: SoftArgmaxSink, dtype: torch.dtype) -> Results:
    expectation = sink.s.div_(sink.z.unsqueeze(1))
    return expectation.to(dtype), sink.m, sink.z


def _softargmax_fake(geometry: Geometry, input1: torch.Tensor, k: int) -> Results:
    stats = input1.new_empty((geometry.batch, *geometry.out_size), dtype=compute_dtype(input1.dtype))
    return input1.new_empty((geometry.batch, geometry.ndim, *geometry.out_size)), stats, stats.clone()


def _softargmax_source(geometry: Geometry, results: Results, grad: torch.Tensor, temperature: float,
                       dtype: torch.dtype) -> tuple[GradSource, Any]:
    expectation, m, z = results
    return softargmax_grad(geometry, m, z, expectation, grad, temperature), None


def _max_sink(g: Geometry, dtype: torch.dtype, device: torch.device, k: Any, temperature: float,
              nan_aware: bool) -> ReductionSink:
    return MaxSink(g, dtype, device)


class _Shared(TypedDict):
    """The fields that ``max`` and ``argmax`` share (one sink, two public results)."""

    takes_k: bool
    make_sink: Callable[[Geometry, torch.dtype, torch.device, Any, float, bool], ReductionSink]
    cost: Callable[[int, Any, int], SinkCost]
    finish: Callable[[Any, torch.dtype], Results]
    fake: Callable[[Geometry, torch.Tensor, int], Results]


_MAX = _Shared(takes_k=False, make_sink=_max_sink, cost=lambda elem, k, ndim: MaxSink.cost(elem),
               finish=_selected, fake=_selected_fake)

#: Every reduction, by name.
REDUCTIONS: dict[str, Reduction] = {r.name: r for r in (
    Reduction(name="max", grad_source=_selection_source, result=lambda g, r: r[0].squeeze(1), **_MAX),
    Reduction(name="argmax", grad_source=None, result=lambda g, r: index_to_displacement(g, r[1].squeeze(1), dim=1),
              **_MAX),
    Reduction(
        name="softargmax", takes_k=False,
        make_sink=lambda g, dtype, device, k, temperature, nan_aware: SoftArgmaxSink(g, dtype, device, temperature),
        cost=lambda elem, k, ndim: SoftArgmaxSink.cost(elem, ndim), finish=_softargmax_finish, fake=_softargmax_fake,
        grad_source=_softargmax_source, result=lambda g, r: r[0],
    ),
    Reduction(
        name="topk", takes_k=True,
        make_sink=lambda g, dtype, device, k, temperature, nan_aware: TopKSink(g, dtype, device, k, nan_aware=nan_aware),
        cost=lambda elem, k, ndim: TopKSink.cost(elem, k), finish=_selected, fake=_selected_fake,
        grad_source=_selection_source, result=lambda g, r: TopK(r[0], index_to_displacement(g, r[1], dim=2)),
    ),
)}


def get(name: Any) -> Reduction:
    """The reduction called ``name``; anything else is refused with the list of valid names."""
    if not isinstance(name, str):
        raise ArgumentTypeError(f"reduction must be a str, one of {tuple(REDUCTIONS)}, got {show(name)}")
    try:
        return REDUCTIONS[name]
    except KeyError:
        raise ArgumentValueError(f"reduction must be one of {tuple(REDUCTIONS)}, got {show(name)}") from None


def sink_cost(name: str, k: int | None, ndim: int, dtype: torch.dtype) -> SinkCost:
    """The per-tile temporaries of a reduction for inputs of ``dtype`` (see :class:`~tiledcorr.planning.costs.SinkCost`)."""
    return get(name).cost(element_size(compute_dtype(dtype)), k, ndim)
