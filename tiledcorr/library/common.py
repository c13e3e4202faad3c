"""What every tiledcorr operator shares: the arguments it carries, run-time planning, one autograd registration.

An operator takes only what the dispatcher, the compiler and the exporters
can carry (tensors, ints, a float, strings):

* ``geometry``, the geometry's parameters as one flat list of ints: kernel,
  patch, stride, padding, dilation and dilation_patch, one int per spatial
  dimension each, then optionally ``out_limit`` (padding may be negative and
  ``out_limit`` crops the output, for the FlowNet shim). One list, not seven:
  torch's custom-operator wrapper costs time per argument, and a tiny call
  paid tens of microseconds for them;
* ``scale``, the normalisation factor;
* ``budget``, the ``memory_budget`` argument encoded by :func:`encode_budget`;
* ``tiling``, a user's plan's tiling encoded by :func:`encode_tiling`, or
  ``""`` to plan when the operator runs.

Planning (which reads the free memory and caches plans in Python) happens
inside the operators, at run time, so eager and compiled code take the same
path. The forward plans for the forward alone and the backward for the
backward, each under the budget.
"""

from __future__ import annotations

import operator
import time
from typing import Any, Sequence

import torch

from ..budget import CPU_READING_TTL, resolve_budget
from ..errors import ArgumentValueError
from ..geometry import Geometry, check_sizes
from ..planning.costs import SinkCost
from ..planning.planner import Plan, plan_for_tiling, plan_geometry, quantized_budget
from ..planning.tiling import Tiling
from ..typing import BudgetLike

_PARAMS = ("kernel", "patch", "stride", "padding", "dilation", "dilation_patch")


def encode_budget(memory_budget: BudgetLike) -> str:
    """``memory_budget`` as a string an operator can take.

    Only the form is encoded; the value is checked (with the usual error) when
    the operator resolves it. A form of no accepted type raises here.
    """
    if memory_budget is None:
        return ""
    if isinstance(memory_budget, str):
        return f"s:{memory_budget}"
    if isinstance(memory_budget, float):
        return f"f:{float(memory_budget)!r}"
    if not isinstance(memory_budget, (bool, torch.Tensor)):
        try:
            return f"i:{operator.index(memory_budget)}"
        except TypeError:
            pass
    resolve_budget(memory_budget)  # raises its error for every other form
    raise AssertionError("unreachable")


def decode_budget(encoded: str) -> BudgetLike:
    """The ``memory_budget`` that :func:`encode_budget` encoded."""
    if encoded == "":
        return None
    kind, _, text = encoded.partition(":")
    return {"i": int, "f": float, "s": str}[kind](text)


def _tiling_budget(encoded: str) -> int:
    """The bytes of the budget that comes with a user's tiling, encoded ``"i:<bytes>"`` (:func:`operator_args`)."""
    kind, _, text = encoded.partition(":")
    if kind != "i":
        raise ArgumentValueError(f"budget must be 'i:<bytes>' when a tiling is given, got {encoded!r}")
    return int(text)


def encode_tiling(tiling: Tiling) -> str:
    """A plan's tiling as an operator argument: ``"strategy;batch;u1,u2;j1,j2"``."""
    return ";".join([tiling.strategy, str(tiling.batch_tile), ",".join(map(str, tiling.tile)),
                     ",".join(map(str, tiling.disp_tile))])


def decode_tiling(encoded: str) -> Tiling:
    """The tiling :func:`encode_tiling` encoded."""
    strategy, batch, tile, disp = encoded.split(";")
    return Tiling(strategy, int(batch), tuple(int(v) for v in tile.split(",")), tuple(int(v) for v in disp.split(",")))


def geometry_of(shape: Sequence[int], params: Sequence[int]) -> Geometry:
    """The :class:`Geometry` of inputs of ``shape`` and an operator's already validated ``geometry`` argument.

    Repeated calls return the same geometry (a dictionary lookup). Symbolic
    sizes (``torch.export``'s fake kernels) stay symbolic: ``int()`` would
    specialise them, and they are not cached.
    """
    try:
        key = (tuple(shape), tuple(params))
        cached = _GEOMETRIES.get(key)
    except TypeError:  # a symbolic size is unhashable
        return _geometry(shape, params)
    if cached is None:
        cached = _geometry(shape, params)
        if len(_GEOMETRIES) >= _CACHE_MAX:
            _GEOMETRIES.clear()
        _GEOMETRIES[key] = cached
    return cached


def _geometry(shape: Sequence[int], params: Sequence[int]) -> Geometry:
    n = len(shape) - 2
    if n < 1 or len(params) not in (6 * n, 7 * n):
        raise ValueError(f"tiledcorr operators take 6 or 7 ints per spatial dimension in geometry, got {len(params)} "
                         f"for {n} dimensions")
    parts = [tuple(params[i : i + n]) for i in range(0, len(params), n)]
    kernel, patch, stride, padding, dilation, dilation_patch = parts[:6]
    return Geometry(
        batch=_size(shape[0]), channels=_size(shape[1]), in_size=tuple(_size(v) for v in shape[2:]),
        kernel=kernel, patch=patch, stride=stride, padding=padding, dilation=dilation, dilation_patch=dilation_patch,
        out_limit=parts[6] if len(parts) == 7 else None,
    )


#: Geometries by operator arguments, and plans by geometry and budget: a repeated call's planning is two lookups.
_GEOMETRIES: dict[tuple, Geometry] = {}
_CACHE_MAX = 1024


def _size(n: Any) -> Any:
    return n if isinstance(n, torch.SymInt) else int(n)


def geometry_args(geometry: Geometry) -> list[int]:
    """The operators' ``geometry`` argument: the six parameters, then ``out_limit`` if any, flat."""
    return [v for name in _PARAMS for v in getattr(geometry, name)] + list(geometry.out_limit or ())


def operator_args(plan: Plan | None, memory_budget: BudgetLike) -> tuple[str, str]:
    """``(budget, tiling)`` operator arguments: a user's plan's, or the budget to plan for at run time."""
    if plan is None:
        return encode_budget(memory_budget), ""
    return f"i:{plan.budget_bytes}", encode_tiling(plan.tiling)


_RUN_TIME_PLANS: dict[tuple, Plan] = {}


def plan_at_run_time(input1: torch.Tensor, geometry: Geometry, budget: str, tiling: str, requires_grad: bool,
                     sink_cost: SinkCost | None = None) -> Plan:
    """The plan an operator runs: a user's tiling (every field checked), or the planner's for the budget.

    A budget that follows the free memory (``None`` or a fraction) is part of
    the key as the planner quantises it, so the lookup still follows it. The
    geometry's sizes are checked when it is first planned
    (:func:`~tiledcorr.geometry.check_sizes`): under ``torch.compile`` this is
    the first time they are concrete.
    """
    device = input1.device
    follows_free_memory = budget == "" or budget.startswith("f:")
    resolved = _free_memory_budget(budget, device) if follows_free_memory and not tiling else budget
    key = (geometry, input1.dtype, device, resolved, tiling, requires_grad, sink_cost)
    plan = _RUN_TIME_PLANS.get(key)
    if plan is None:
        check_sizes(geometry)
        if tiling:
            plan = plan_for_tiling(geometry, decode_tiling(tiling), dtype=input1.dtype, device_type=device.type,
                                   budget_bytes=_tiling_budget(budget), requires_grad=requires_grad,
                                   sink_cost=sink_cost)
        else:
            plan = plan_geometry(geometry, dtype=input1.dtype, device=device, memory_budget=decode_budget(budget),
                                 requires_grad=requires_grad, sink_cost=sink_cost)
        if len(_RUN_TIME_PLANS) >= _CACHE_MAX:
            _RUN_TIME_PLANS.clear()
        _RUN_TIME_PLANS[key] = plan
    return plan


#: CPU budgets that follow the free memory, as last resolved: encoded budget -> (time, bytes).
_CPU_BUDGETS: dict[str, tuple[float, int]] = {}


def _free_memory_budget(budget: str, device: torch.device) -> int:
    """:func:`~tiledcorr.planning.planner.quantized_budget` of an encoded budget that follows the free memory.

    On CPU the free memory is read at most every ``CPU_READING_TTL`` seconds
    anyway, so the resolved budget is kept as long: the five calls that
    resolve it again were a twentieth of a small call.
    """
    if device.type != "cpu":
        return quantized_budget(decode_budget(budget), device)
    now = time.monotonic()
    hit = _CPU_BUDGETS.get(budget)
    if hit is not None and now - hit[0] <= CPU_READING_TTL:
        return hit[1]
    if len(_CPU_BUDGETS) >= _CACHE_MAX:
        _CPU_BUDGETS.clear()
    value = quantized_budget(decode_budget(budget), device)
    _CPU_BUDGETS[budget] = (now, value)
    return value


def input_grads_or_empty(input1: torch.Tensor, input2: torch.Tensor, grad1: torch.Tensor | None,
                         grad2: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """A backward operator's results: an empty tensor stands for a gradient that is not needed."""
    return (input1.new_empty(0) if grad1 is None else grad1), (input2.new_empty(0) if grad2 is None else grad2)


def input_grads_fake(input1: torch.Tensor, input2: torch.Tensor, need1: bool, need2: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The fake (meta) results of a backward operator: the inputs' shapes, or empty where not needed."""
    return input1.new_empty(input1.shape if need1 else (0,)), input2.new_empty(input2.shape if need2 else (0,))
