"""Fused reductions of inputs (or gradients) holding NaN or Inf.

Each result must equal the same torch reduction of the IEEE-exact cost volume
(every sum over its valid terms only, semantics.md section 1), forward and
backward, whatever the tiling. The volume and the input gradients come from
the independent float64 numpy construction of ``test_nonfinite.py``; the
reductions and their volume gradients from torch's own ops, whose NaN rules
the sinks follow: NaN is the largest value (``torch.max``, ``torch.sort``),
equal values go to the lowest index, and a softmax over a row with NaN or
+inf is NaN.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

import tiledcorr
from tiledcorr.planning.tiling import Tiling
from tiledcorr.planning.planner import make_geometry, plan_for_tiling, plan_geometry
from tiledcorr.reductions import REDUCTIONS, sink_cost

from test_nonfinite import CONFIGS, _ids, _inputs, _sprinkle, assert_ieee_equal, ieee_backward, ieee_forward

from support import cpu_strategies  # noqa: E402

STRATEGIES = cpu_strategies()

F64 = torch.float64
TEMPERATURE = 0.7


def _shift_table(geometry) -> torch.Tensor:
    """(prod(patch), 2) displacement in pixels of each flat index."""
    per_dim = [torch.tensor([(j - (P - 1) // 2) * q for j in range(P)]) for P, q in zip(geometry.patch, geometry.dilation_patch)]
    return torch.cartesian_prod(*per_dim).view(-1, 2)


def _reduce(volume: torch.Tensor, reduction: str, k: int, table: torch.Tensor):
    """torch's reduction of a stored volume ``(B, PH, PW, oH, oW)``: (values or None, displacements or None)."""
    v = volume.flatten(1, 2)  # (B, J, oH, oW)
    if reduction in ("max", "argmax"):
        best = v.max(dim=1)  # NaN first, then the first maximum
        return best.values, table[best.indices].movedim(-1, 1)
    if reduction == "topk":
        order = torch.sort(v.detach(), dim=1, descending=True, stable=True).indices[:, :k]
        return v.gather(1, order), table[order].movedim(-1, 2)
    weights = torch.softmax(v / TEMPERATURE, dim=1)
    return torch.einsum("bjhw,jc->bchw", weights, table.to(v.dtype)), None


def _plans(shape, kw, reduction, k):
    """Large tiles with each strategy, and many small tiles."""
    geometry = make_geometry(shape, None, *(kw.get(n, d) for n, d in (
        ("kernel_size", 1), ("patch_size", 1), ("stride", 1), ("padding", 0), ("dilation", 1), ("dilation_patch", 1))))
    cost = sink_cost(reduction, k, 2, F64)
    plans = [plan_geometry(geometry, dtype=F64, memory_budget="1GiB", requires_grad=True, strategy=s, sink_cost=cost)
             for s in sorted(STRATEGIES)]
    try:
        plan_geometry(geometry, dtype=F64, memory_budget=1, requires_grad=True, sink_cost=cost)
    except tiledcorr.MemoryBudgetError as exc:
        small = plan_geometry(geometry, dtype=F64, memory_budget=8 * exc.minimum_bytes, requires_grad=True,
                              sink_cost=cost)
        if small.passes > 40:
            # The exact backward recomputes every band about twenty times (once per class of special value):
            # a 336-tile soft-argmax plan took 15 s alone. Whole rows of positions keep the split displacements.
            tiling = dataclasses.replace(small.tiling, tile=(1, geometry.out_size[-1]))
            small = plan_for_tiling(geometry, tiling, dtype=F64, device_type="cpu", budget_bytes=2**30,
                                    requires_grad=True, sink_cost=cost)
        plans.append(small)
    assert plans[-1].passes > 2
    return geometry, plans


def _assert_same(actual: torch.Tensor, expected: torch.Tensor, tol: float) -> None:
    if actual.dtype == torch.long:
        assert torch.equal(actual, expected), (actual != expected).nonzero()[:5].tolist()
    else:
        assert_ieee_equal(actual, expected.detach().numpy(), tol)


@pytest.mark.parametrize("case", CONFIGS, ids=[_ids(c) for c in CONFIGS])
@pytest.mark.parametrize("reduction", tuple(REDUCTIONS))
def test_forward_and_backward_equal_torch_on_the_exact_volume(case, reduction):
    shape, kw = case
    x1, x2 = _inputs(shape, seed=3)
    x1, x2 = _sprinkle(x1, 1), _sprinkle(x2, 2)
    geometry, plans = _plans(shape, kw, reduction, 3 if reduction == "topk" else None)
    table = _shift_table(geometry)
    k = min(3, len(table)) if reduction == "topk" else None
    volume = torch.from_numpy(ieee_forward(x1, x2, **kw)).requires_grad_()
    values, displacements = _reduce(volume, reduction, k or 1, table)
    if reduction == "argmax":
        expected, result = displacements, values
    elif reduction == "topk":
        expected, result = (values, displacements), values
    else:
        expected, result = values, values
    assert not torch.isfinite(result).all(), "the special values should reach some results"
    grad = torch.randn(result.shape, dtype=F64, generator=torch.Generator().manual_seed(7))
    if reduction != "argmax":
        (grad_volume,) = torch.autograd.grad(result, volume, grad)
        e1, e2 = ieee_backward(x1, x2, grad_volume, **kw)
    for plan in plans:
        a, b = x1.clone().requires_grad_(), x2.clone().requires_grad_()
        out = tiledcorr.correlate_reduce(a, b, **kw, reduction=reduction, k=k, temperature=TEMPERATURE, plan=plan)
        if reduction == "topk":
            _assert_same(out.values, expected[0], 1e-12)
            _assert_same(out.displacements, expected[1], 0)
        else:
            _assert_same(out, expected, 1e-12)
        if reduction == "argmax":
            continue
        (out.values if reduction == "topk" else out).backward(grad)
        assert_ieee_equal(a.grad, e1, 1e-10)
        assert_ieee_equal(b.grad, e2, 1e-10)


@pytest.mark.parametrize("reduction", ["max", "topk", "softargmax"])
def test_a_nonfinite_gradient_of_finite_inputs_reaches_only_valid_terms(reduction):
    """Finite inputs, NaN and Inf in the gradient of the results only."""
    shape, kw = (1, 2, 6, 7), dict(patch_size=5, padding=1)
    x1, x2 = _inputs(shape, seed=5)
    x2[0, 1, 2, 2] = 0.0
    geometry, plans = _plans(shape, kw, reduction, 2)
    table = _shift_table(geometry)
    k = 2 if reduction == "topk" else None
    volume = torch.from_numpy(ieee_forward(x1, x2, **kw)).requires_grad_()
    result = _reduce(volume, reduction, k or 1, table)[0]
    grad = torch.randn(result.shape, dtype=F64, generator=torch.Generator().manual_seed(8))
    # Interior positions, whose sums have valid terms (the border ones read the padding).
    grad[0, ..., 2, 3], grad[0, ..., 3, 2], grad[0, ..., 4, 4] = math.nan, math.inf, -math.inf
    (grad_volume,) = torch.autograd.grad(result, volume, grad)
    e1, e2 = ieee_backward(x1, x2, grad_volume, **kw)
    assert not np.isfinite(e1).all() and not np.isfinite(e2).all()
    for plan in plans:
        a, b = x1.clone().requires_grad_(), x2.clone().requires_grad_()
        out = tiledcorr.correlate_reduce(a, b, **kw, reduction=reduction, k=k, temperature=TEMPERATURE, plan=plan)
        (out.values if reduction == "topk" else out).backward(grad)
        assert_ieee_equal(a.grad, e1, 1e-10)
        assert_ieee_equal(b.grad, e2, 1e-10)


def test_finite_inputs_never_take_the_exact_path(monkeypatch):
    from tiledcorr.execution import nonfinite

    def fail(*args, **kwargs):
        raise AssertionError("finite inputs took the NaN/Inf path")

    monkeypatch.setattr(nonfinite, "run_forward", fail)
    monkeypatch.setattr(nonfinite, "run_backward", fail)
    x1, x2 = _inputs((1, 3, 6, 7), seed=1)
    for reduction in REDUCTIONS:
        a, b = x1.clone().requires_grad_(), x2.clone().requires_grad_()
        out = tiledcorr.correlate_reduce(a, b, patch_size=3, reduction=reduction, k=2 if reduction == "topk" else None)
        if reduction != "argmax":
            (out.values if reduction == "topk" else out).sum().backward()


def test_softargmax_after_a_tile_of_only_minus_infinity():
    """A position whose first displacement tile is all -inf and whose later ones are finite.

    x1 is +inf at one pixel of the bottom row and x2 negative everywhere: the
    displacements that stay inside the image give -inf, those below it give 0.
    With one displacement row per tile the running maximum is still -inf after
    the first tile, which must not turn the sums into NaN (-inf - -inf).
    """
    shape, kw = (1, 1, 4, 5), dict(patch_size=5)
    x1 = torch.ones(shape, dtype=F64)
    x1[0, 0, 3, 2] = math.inf
    x2 = -torch.rand(shape, dtype=F64, generator=torch.Generator().manual_seed(2)) - 0.5
    volume = torch.from_numpy(ieee_forward(x1, x2, **kw))
    base = tiledcorr.plan(shape, dtype=F64, memory_budget="1GiB", strategy="shift", **kw)
    plan = dataclasses.replace(base, tiling=Tiling("shift", 1, base.tiling.tile, (1, 5)))
    assert plan.passes == 5
    got = tiledcorr.correlate_reduce(x1, x2, **kw, reduction="softargmax", temperature=TEMPERATURE, plan=plan)
    expected = _reduce(volume, "softargmax", 1, _shift_table(plan.geometry))[0]
    assert volume[0, 0, :, 3, 2].eq(-math.inf).all() and torch.isfinite(expected[0, :, 3, 2]).all()
    _assert_same(got, expected, 1e-12)


@pytest.mark.parametrize("reduction", ["max", "topk", "softargmax"])
def test_float32_results_and_gradients_have_the_exact_classes(reduction):
    """The exact path in float32 (uint8 indicator maps gathered into a float32 workspace)."""
    shape, kw = CONFIGS[1]
    x1, x2 = _inputs(shape, seed=3)
    x1, x2 = _sprinkle(x1, 1).float(), _sprinkle(x2, 2).float()
    k = 3 if reduction == "topk" else None
    table = _shift_table(_plans(shape, kw, reduction, k)[0])
    volume = torch.from_numpy(ieee_forward(x1, x2, **kw)).requires_grad_()
    values = _reduce(volume, reduction, k or 1, table)[0]
    grad = torch.randn(values.shape, dtype=F64, generator=torch.Generator().manual_seed(7))
    (grad_volume,) = torch.autograd.grad(values, volume, grad)
    e1, e2 = ieee_backward(x1, x2, grad_volume, **kw)
    a, b = x1.clone().requires_grad_(), x2.clone().requires_grad_()
    out = tiledcorr.correlate_reduce(a, b, **kw, reduction=reduction, k=k, temperature=TEMPERATURE, memory_budget="64KiB")
    out = out.values if reduction == "topk" else out
    assert_ieee_equal(out, values.detach().numpy(), 1e-5)
    out.backward(grad.float())
    assert_ieee_equal(a.grad, e1, 1e-4)
    assert_ieee_equal(b.grad, e2, 1e-4)


def test_stacked_indicator_problems_fit_the_budget():
    """The pairs stacked along channels share a workspace in the compute dtype (float64: 8 bytes)."""
    from tiledcorr.execution.engine import workspace_elements
    from tiledcorr.execution.nonfinite import _stack_size

    shape = (2, 8, 24, 20)
    for dtype in (torch.float32, F64):
        plan = tiledcorr.plan(shape, patch_size=9, dtype=dtype, memory_budget="512KiB")
        elem = torch.empty((), dtype=dtype).element_size()
        maps = 2 * 6 * math.prod(shape)
        n = _stack_size(plan, 6)
        stacked = dataclasses.replace(plan.geometry, channels=n * shape[1])
        used = elem * sum(workspace_elements(stacked, plan.tiling, backward=False).values()) + maps
        assert n == 1 or used <= plan.budget_bytes, (dtype, n, used, plan.budget_bytes)
        assert n < 6  # the budget is tight enough to limit the stacking
