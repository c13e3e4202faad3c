"""Thread safety: Python threads calling correlate at once, with different shapes and
budgets (so they plan concurrently and share the plan cache), all get correct results."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import torch

import tiledcorr
from tiledcorr.planning import planner
from tiledcorr.reference import correlate_reference

THREADS = 4

JOBS = [
    ((2, 3, 9, 11), dict(patch_size=5, padding=1), "64KiB"),
    ((1, 4, 12, 7), dict(kernel_size=3, patch_size=(3, 7), stride=2), "16KiB"),
    ((2, 2, 8, 8), dict(patch_size=9, dilation_patch=2), None),
    ((1, 3, 10, 10), dict(kernel_size=2, patch_size=4, dilation=2), "1MiB"),
    ((3, 1, 6, 9), dict(patch_size=3), 0.01),
    ((1, 2, 3, 4, 5), dict(patch_size=3, padding=1), "16KiB"),
]


def _job(index: int, barrier: threading.Barrier) -> None:
    shape, kw, budget = JOBS[index % len(JOBS)]
    g = torch.Generator().manual_seed(index)
    x1, x2 = torch.randn(shape, generator=g, dtype=torch.float64), torch.randn(shape, generator=g, dtype=torch.float64)
    a, b = x1.clone().requires_grad_(), x2.clone().requires_grad_()
    ra, rb = x1.clone().requires_grad_(), x2.clone().requires_grad_()
    barrier.wait(timeout=60)  # start in groups, so the planning and the tile loops overlap
    out = tiledcorr.correlate(a, b, memory_budget=budget, **kw)
    ref = correlate_reference(ra, rb, **kw)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    grad = torch.randn(ref.shape, generator=g, dtype=torch.float64)
    out.backward(grad)
    ref.backward(grad)
    torch.testing.assert_close(a.grad, ra.grad, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(b.grad, rb.grad, rtol=1e-10, atol=1e-10)


def test_concurrent_calls_with_different_shapes_and_budgets():
    planner._cached_plan.cache_clear()  # the threads fill the shared cache concurrently
    barrier = threading.Barrier(THREADS)  # reused: each group of THREADS jobs starts together
    with ThreadPoolExecutor(THREADS) as pool:
        futures = [pool.submit(_job, i, barrier) for i in range(2 * len(JOBS))]
        for f in futures:
            f.result(timeout=120)  # re-raises a failed comparison
    assert planner._cached_plan.cache_info().currsize >= len(JOBS)


def test_shared_plan_object_used_by_many_threads():
    """One Plan (immutable) used by all threads at once gives every thread its own correct result."""
    shape, kw = (1, 3, 9, 9), dict(patch_size=7, kernel_size=2, padding=1)
    plan = tiledcorr.plan(shape, dtype=torch.float64, memory_budget="16KiB", **kw)
    assert plan.passes > 4
    inputs = [torch.randn(2, *shape, dtype=torch.float64, generator=torch.Generator().manual_seed(i)) for i in range(8)]
    with ThreadPoolExecutor(THREADS) as pool:
        outs = list(pool.map(lambda x: tiledcorr.correlate(x[0], x[1], plan=plan, **kw), inputs))
    for x, out in zip(inputs, outs):
        torch.testing.assert_close(out, correlate_reference(x[0], x[1], **kw), rtol=1e-10, atol=1e-10)
