"""Property-based tests: random shapes, parameters, normalisations, strategies and budgets
against the float64 reference, forward and backward.

The number of examples comes from the hypothesis profile (tests/conftest.py;
``HYPOTHESIS_PROFILE=dev`` or ``thorough`` for more, see docs/testing.md).
Sizes are kept small so that even the smallest plans run in milliseconds.
"""

from __future__ import annotations

import math

import pytest
import torch

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, strategies as st  # noqa: E402

import tiledcorr  # noqa: E402
from tiledcorr.reference import correlate_reference  # noqa: E402

from support import cpu_strategies  # noqa: E402

STRATEGIES = cpu_strategies()

NORMALIZE = {None: lambda C, K: 1.0, "channels": lambda C, K: 1 / C,
             "kernel_channels": lambda C, K: 1 / (C * K), "sqrt_channels": lambda C, K: 1 / math.sqrt(C)}


def per_dim(ndim: int, lo: int, hi: int) -> st.SearchStrategy:
    """An int, or a tuple of ``ndim`` ints, as users pass them."""
    return st.one_of(st.integers(lo, hi), st.tuples(*[st.integers(lo, hi)] * ndim))


@st.composite
def problems(draw, ndim: int, max_size: int, max_patch: int):
    shape = (draw(st.integers(0, 2)), draw(st.integers(0, 3)), *draw(st.tuples(*[st.integers(1, max_size)] * ndim)))
    kw = dict(
        kernel_size=draw(per_dim(ndim, 1, 3)), patch_size=draw(per_dim(ndim, 1, max_patch)), stride=draw(per_dim(ndim, 1, 3)),
        padding=draw(per_dim(ndim, 0, 3)), dilation=draw(per_dim(ndim, 1, 2)), dilation_patch=draw(per_dim(ndim, 1, 3)),
    )
    return shape, kw


def check(smallest_budget, shape, kw, normalize, strategy, budget_factor, seed):
    """correlate with a plan of ``budget_factor`` x the smallest budget, against the reference."""
    smallest = smallest_budget(shape, dtype=torch.float64, requires_grad=True, strategy=strategy, **kw)
    plan = tiledcorr.plan(shape, dtype=torch.float64, memory_budget=budget_factor * smallest, requires_grad=True,
                          strategy=strategy, **kw)
    g = torch.Generator().manual_seed(seed)
    x1, x2 = torch.randn(shape, generator=g, dtype=torch.float64), torch.randn(shape, generator=g, dtype=torch.float64)
    a, b = x1.clone().requires_grad_(), x2.clone().requires_grad_()
    out = tiledcorr.correlate(a, b, normalize=normalize, plan=plan, **kw)
    ra, rb = x1.clone().requires_grad_(), x2.clone().requires_grad_()
    scale = NORMALIZE[normalize](shape[1], math.prod(plan.geometry.kernel)) if shape[1] else 1.0
    ref = correlate_reference(ra, rb, **kw) * scale
    assert out.shape == ref.shape == plan.geometry.out_shape
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    grad = torch.randn(ref.shape, generator=g, dtype=torch.float64)
    out.backward(grad)
    if ref.requires_grad:  # no graph when the output or the inputs are empty
        ref.backward(grad)
    for mine, theirs in ((a.grad, ra.grad), (b.grad, rb.grad)):
        torch.testing.assert_close(mine, torch.zeros_like(mine) if theirs is None else theirs, rtol=1e-10, atol=1e-10)


@given(
    problem=problems(ndim=2, max_size=9, max_patch=5),
    normalize=st.sampled_from(list(NORMALIZE)),
    strategy=st.sampled_from([None, *STRATEGIES]),
    budget_factor=st.sampled_from([1, 3, 50, 2**30]),
    seed=st.integers(0, 2**16),
)
def test_images_match_reference(smallest_budget, problem, normalize, strategy, budget_factor, seed):
    check(smallest_budget, *problem, normalize, strategy, budget_factor, seed)


@given(
    problem=problems(ndim=3, max_size=4, max_patch=3),
    strategy=st.sampled_from([None, *STRATEGIES]),
    budget_factor=st.sampled_from([4, 2**30]),
    seed=st.integers(0, 2**16),
)
def test_volumes_match_reference(smallest_budget, problem, strategy, budget_factor, seed):
    check(smallest_budget, *problem, None, strategy, budget_factor, seed)
