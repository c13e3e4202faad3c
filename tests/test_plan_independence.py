"""Plan independence and determinism.

For random configurations, every plan, from one chunk down to the smallest
tile, with every strategy, gives the same output and gradients to float32
rounding; and the same plan run twice gives bit-identical results.
"""

from __future__ import annotations

import random

import pytest
import torch

import tiledcorr
from tiledcorr.reference import correlate_reference

from support import cpu_strategies  # noqa: E402

STRATEGIES = cpu_strategies()


def random_config(seed: int) -> tuple[tuple[int, ...], dict]:
    """A small random problem: shape and parameters (tuples and even sizes included)."""
    rng = random.Random(seed)
    pair = lambda lo, hi: (rng.randint(lo, hi), rng.randint(lo, hi))  # noqa: E731
    shape = (rng.randint(1, 2), rng.randint(1, 3), *pair(3, 8))
    kw = dict(kernel_size=pair(1, 2), patch_size=pair(1, 5), stride=pair(1, 2), padding=pair(0, 2),
              dilation=pair(1, 2), dilation_patch=pair(1, 2))
    return shape, kw


CONFIGS = [random_config(seed) for seed in range(4)]


def all_plans(smallest_budget, shape, **kw) -> list[tiledcorr.Plan]:
    """Distinct plans of every strategy for budgets from 1 GiB down to the minimum."""
    plans = {}
    for strategy in STRATEGIES:
        smallest = smallest_budget(shape, requires_grad=True, strategy=strategy, **kw)
        for budget in (2**30, 64 * smallest, 8 * smallest, 2 * smallest, smallest):
            p = tiledcorr.plan(shape, memory_budget=budget, requires_grad=True, strategy=strategy, **kw)
            assert p.peak_workspace_bytes <= budget
            plans.setdefault(p.tiling, p)
    return list(plans.values())


def run(x1, x2, grad, plan, **kw):
    a, b = x1.clone().requires_grad_(), x2.clone().requires_grad_()
    out = tiledcorr.correlate(a, b, plan=plan, **kw)
    out.backward(grad)
    return out.detach(), a.grad, b.grad


def _inputs(shape, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g), torch.randn(shape, generator=g)


@pytest.mark.parametrize("shape, kw", CONFIGS, ids=[f"config{i}" for i in range(len(CONFIGS))])
def test_every_plan_gives_the_same_result(shape, kw, smallest_budget):
    x1, x2 = _inputs(shape, 0)
    ra, rb = x1.double().requires_grad_(), x2.double().requires_grad_()
    ref = correlate_reference(ra, rb, **kw)
    grad = torch.randn(ref.shape, generator=torch.Generator().manual_seed(1))
    ref.backward(grad.double())
    plans = all_plans(smallest_budget, shape, **kw)
    assert len({p.strategy for p in plans}) == len(STRATEGIES) and max(p.passes for p in plans) > 4 * min(p.passes for p in plans)
    for p in plans:
        for mine, expected in zip(run(x1, x2, grad, p, **kw), (ref, ra.grad, rb.grad)):
            scale = expected.abs().max().clamp_min(1.0)
            assert (mine.double() - expected).abs().max() <= 1e-5 * scale, str(p)


@pytest.mark.parametrize("shape, kw", CONFIGS[:2], ids=["config0", "config1"])
def test_same_plan_is_bit_identical(shape, kw, smallest_budget):
    x1, x2 = _inputs(shape, 2)
    plans = all_plans(smallest_budget, shape, **kw)
    grad = torch.randn(plans[0].geometry.out_shape, generator=torch.Generator().manual_seed(3))
    for p in (plans[0], plans[-1]):
        first, second = run(x1, x2, grad, p, **kw), run(x1, x2, grad, p, **kw)
        for one, two in zip(first, second):
            assert torch.equal(one, two)


def test_budget_changes_the_plan_but_not_the_values():
    """A bigger problem: a tight budget really cuts the work into many more tiles."""
    shape, kw = (2, 8, 24, 20), dict(patch_size=9, kernel_size=3, padding=1)
    x1, x2 = _inputs(shape, 4)
    big = tiledcorr.plan(shape, memory_budget="1GiB", **kw)
    tight = tiledcorr.plan(shape, memory_budget=big.forward_workspace_bytes // 16, **kw)
    assert tight.passes > 4 * big.passes and tight.peak_workspace_bytes <= big.forward_workspace_bytes // 16
    one = tiledcorr.correlate(x1, x2, plan=big, **kw)
    many = tiledcorr.correlate(x1, x2, plan=tight, **kw)
    torch.testing.assert_close(one, many, rtol=1e-5, atol=1e-5 * one.abs().max().item())
