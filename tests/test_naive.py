"""naive_correlate (the unfold baseline of the profiler and benchmarks) against the float64 reference."""

from __future__ import annotations

import sys

import pytest
import torch

import tiledcorr
from tiledcorr.errors import ShapeError
from tiledcorr.tools.measure import peak_memory
from tiledcorr.tools.naive import naive_correlate, naive_peak_bytes
from tiledcorr.reference import correlate_reference

# Every parameter away from its default somewhere, tuples, even sizes, non-square images, B > 1.
GRID = [
    ((2, 3, 9, 11), dict(patch_size=9)),
    ((1, 4, 7, 5), dict()),
    ((3, 2, 10, 8), dict(kernel_size=3, patch_size=5)),
    ((2, 3, 13, 9), dict(kernel_size=(2, 3), patch_size=(4, 7), stride=(2, 1))),
    ((2, 2, 11, 12), dict(patch_size=6, padding=2, dilation_patch=2)),
    ((1, 5, 9, 15), dict(kernel_size=3, dilation=2, stride=3, padding=(1, 3))),
    ((2, 2, 7, 9), dict(kernel_size=(3, 1), patch_size=4, dilation=(1, 2), padding=1, stride=(1, 2))),
    ((1, 3, 8, 8), dict(kernel_size=2, patch_size=2, stride=2, padding=1, dilation=3, dilation_patch=2)),
    ((1, 2, 23, 21), dict(patch_size=41)),
]


def _inputs(shape, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=dtype), torch.randn(shape, generator=g, dtype=dtype)


@pytest.mark.parametrize("shape,kw", GRID, ids=[f"{'x'.join(map(str, s))}-{k}" for s, k in GRID])
def test_forward_and_gradients_match_reference(shape, kw):
    x1, x2 = _inputs(shape)
    a, b = x1.clone().requires_grad_(), x2.clone().requires_grad_()
    ra, rb = x1.clone().requires_grad_(), x2.clone().requires_grad_()
    out, ref = naive_correlate(a, b, **kw), correlate_reference(ra, rb, **kw)
    assert out.shape == ref.shape and out.dtype == torch.float64
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    grad = torch.randn_like(ref)
    torch.testing.assert_close(torch.autograd.grad(out, (a, b), grad), torch.autograd.grad(ref, (ra, rb), grad),
                               rtol=1e-10, atol=1e-10)


def test_float32_matches_tiledcorr():
    x1, x2 = _inputs((2, 8, 12, 10), dtype=torch.float32)
    kw = dict(kernel_size=3, patch_size=7, padding=1, dilation_patch=2)
    torch.testing.assert_close(naive_correlate(x1, x2, **kw), tiledcorr.correlate(x1, x2, **kw), rtol=1e-5, atol=1e-5)


def test_empty_output_when_kernel_does_not_fit():
    x1, x2 = _inputs((2, 3, 2, 5))
    out = naive_correlate(x1, x2, kernel_size=3, patch_size=3)
    assert out.shape == (2, 3, 3, 0, 3)


def test_rejects_volumes_and_bad_parameters():
    x1, x2 = _inputs((1, 2, 4, 4, 4))
    with pytest.raises(ShapeError, match=r"\(B, C, H, W\)"):
        naive_correlate(x1, x2, patch_size=3)
    x1, x2 = _inputs((1, 2, 4, 4))
    with pytest.raises(ValueError, match="patch_size"):
        naive_correlate(x1, x2, patch_size=0)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="exact CPU peak needs /proc")
def test_peak_memory_is_two_materialised_tensors():
    """The forward holds the windows and their product: two tensors of plan.naive_bytes."""
    shape, kw = (1, 16, 32, 32), dict(patch_size=15)
    x1, x2 = _inputs(shape, dtype=torch.float32)
    naive_correlate(x1, x2, **kw)  # warm-up
    # Three measurements: a run can reuse pages the allocator already holds (seen once in CI, at
    # half the prediction), so the lower bound takes the largest and the upper bound the smallest.
    peaks = [peak_memory(lambda: naive_correlate(x1, x2, **kw))[1] for _ in range(3)]
    predicted = naive_peak_bytes(tiledcorr.plan(shape, **kw, memory_budget="1GiB"))
    assert 0.8 * predicted < max(peaks) and min(peaks) < 1.25 * predicted, (peaks, predicted)
