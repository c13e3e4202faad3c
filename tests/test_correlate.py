"""correlate(): forward and both gradients against the float64 reference, over the parameter grid."""

from __future__ import annotations

import random

import pytest
import torch

import tiledcorr
from tiledcorr.reference import correlate_reference

from support import assert_matches_reference, cpu_strategies

STRATEGIES = cpu_strategies()

# (shape B,C,H,W ; kernel, patch, stride, padding, dilation, dilation_patch): every parameter takes
# a value other than 1 (0 for padding) somewhere, tuples, even sizes, odd non-square images, B > 1.
GRID = [
    ((2, 3, 9, 11), dict(patch_size=9)),
    ((1, 4, 7, 5), dict(patch_size=1)),
    ((3, 2, 10, 8), dict(kernel_size=3, patch_size=5)),
    ((2, 3, 13, 9), dict(kernel_size=(2, 3), patch_size=(4, 7), stride=(2, 1))),
    ((2, 2, 11, 12), dict(patch_size=6, padding=2, dilation_patch=2)),
    ((1, 5, 9, 15), dict(kernel_size=3, dilation=2, stride=3, padding=(1, 3))),
    ((2, 3, 12, 10), dict(patch_size=(3, 5), dilation_patch=(3, 1), stride=2)),
    ((2, 2, 7, 9), dict(kernel_size=(3, 1), patch_size=4, dilation=(1, 2), padding=1, stride=(1, 2))),
    ((1, 3, 8, 8), dict(kernel_size=2, patch_size=2, stride=2, padding=1, dilation=3, dilation_patch=2)),
    ((1, 2, 9, 7), dict(patch_size=21, padding=3)),
    ((1, 2, 23, 21), dict(patch_size=41)),
    ((2, 3, 15, 17), dict(patch_size=31, dilation_patch=2, stride=3)),
]


def _ids(case):
    shape, kw = case
    return "x".join(map(str, shape)) + "-" + ",".join(f"{k}={v}" for k, v in kw.items())


@pytest.fixture(params=GRID, ids=[_ids(c) for c in GRID])
def case(request):
    return request.param


def _inputs(shape, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=dtype), torch.randn(shape, generator=g, dtype=dtype)


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_forward_and_gradients_match_reference(case, strategy):
    shape, kw = case
    x1, x2 = _inputs(shape)
    p = tiledcorr.plan(shape, dtype=torch.float64, strategy=strategy, requires_grad=True, memory_budget="1GiB", **kw)
    out, ref = assert_matches_reference(
        lambda a, b: tiledcorr.correlate(a, b, plan=p, **kw), lambda a, b: correlate_reference(a, b, **kw),
        x1, x2, rtol=1e-10, atol=1e-10,
    )
    assert out.shape == ref.shape and out.dtype == torch.float64 and out.is_contiguous()


def _smallest_budget(shape, **kw) -> int:
    try:
        tiledcorr.plan(shape, memory_budget=1, requires_grad=True, **kw)
    except tiledcorr.MemoryBudgetError as exc:
        return exc.minimum_bytes
    raise AssertionError("a 1-byte budget cannot fit")


def _many_tile_plan(shape, min_passes: int, max_passes: int = 3000, **kw):
    """The plan of the largest budget (halving from the one-chunk plan's) with at least ``min_passes`` tiles."""
    big = tiledcorr.plan(shape, memory_budget="4GiB", requires_grad=True, **kw)
    budget = big.peak_workspace_bytes
    floor = _smallest_budget(shape, **kw)
    while budget > floor:
        budget = max(floor, budget // 2)
        p = tiledcorr.plan(shape, memory_budget=budget, requires_grad=True, **kw)
        if p.passes >= min_passes:
            assert p.passes <= max_passes, p.passes
            return big, p
    raise AssertionError(f"no plan with {min_passes} tiles for {shape} {kw}")


def test_tiny_chunking_agrees_with_one_chunk(case):
    """float32: many displacement chunks and row tiles give the single-chunk result to 1e-5 of its scale."""
    shape, kw = case
    x1, x2 = _inputs(shape, torch.float32, seed=1)
    big, tiny = _many_tile_plan(shape, min_passes=4 * max(1, tiledcorr.plan(shape, memory_budget="4GiB", **kw).passes), **kw)
    assert tiny.passes > big.passes and tiny.peak_workspace_bytes < big.peak_workspace_bytes
    results = []
    for p in (big, tiny):
        a, b = x1.clone().requires_grad_(), x2.clone().requires_grad_()
        out = tiledcorr.correlate(a, b, plan=p, **kw)
        out.backward(torch.ones_like(out))
        results.append((out, a.grad, b.grad))
    for one, many in zip(*results):
        scale = one.abs().max().clamp_min(1e-30)
        assert (one - many).abs().max() <= 1e-5 * scale


GRADCHECK = [
    dict(kernel_size=3, patch_size=3, stride=2, dilation=2, dilation_patch=2, padding=2),
    dict(kernel_size=(2, 3), patch_size=(4, 3), stride=(1, 2), dilation=(2, 1), dilation_patch=(1, 2), padding=1),
]


@pytest.mark.parametrize("kw", GRADCHECK)
@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_gradcheck_across_several_chunks(kw, strategy):
    shape = (2, 1, 6, 5)
    x1, x2 = _inputs(shape)
    _, small = _many_tile_plan(shape, min_passes=6, **kw)
    p = tiledcorr.plan(shape, dtype=torch.float64, memory_budget=2 * small.peak_workspace_bytes, requires_grad=True,
                       strategy=strategy, **kw)
    assert p.passes > 4
    fn = lambda a, b: tiledcorr.correlate(a, b, plan=p, **kw)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x1.requires_grad_(), x2.requires_grad_()), fast_mode=True)


def test_double_backward_raises_clearly():
    x1, x2 = _inputs((1, 2, 5, 5))
    x1.requires_grad_()
    out = tiledcorr.correlate(x1, x2, patch_size=3)
    (g,) = torch.autograd.grad(out.sum(), x1, create_graph=True)
    assert g.requires_grad  # carries the guard, so the error comes from tiledcorr
    with pytest.raises(RuntimeError, match="differentiable once"):
        g.pow(2).sum().backward()


def test_only_requested_gradients_are_computed(monkeypatch):
    x1, x2 = _inputs((1, 3, 6, 7))
    x2.requires_grad_()
    calls = []
    from tiledcorr.execution import context

    real = context.scatter_add
    monkeypatch.setattr(context, "scatter_add", lambda target, *a, **k: (calls.append(target.shape), real(target, *a, **k)))
    out = tiledcorr.correlate(x1, x2, patch_size=3, kernel_size=2)
    out.backward(torch.ones_like(out))
    assert x1.grad is None and x2.grad is not None
    ref = x2.detach().clone().requires_grad_()
    correlate_reference(x1, ref, patch_size=3, kernel_size=2).sum().backward()
    torch.testing.assert_close(x2.grad, ref.grad)
    assert calls  # the gradient of input2 went through the engine's scatter


@pytest.mark.parametrize(
    "dtype, tol", [(torch.float32, 1e-5), (torch.float16, 2e-3), (torch.bfloat16, 1.6e-2)]
)
def test_dtypes_accumulate_in_float32_and_return_input_dtype(dtype, tol):
    shape, kw = (2, 64, 9, 10), dict(patch_size=5, kernel_size=3)
    x1, x2 = (t.to(dtype) for t in _inputs(shape, torch.float32, seed=3))
    a, b = x1.clone().requires_grad_(), x2.clone().requires_grad_()
    out = tiledcorr.correlate(a, b, **kw)
    assert out.dtype == dtype
    ref = correlate_reference(x1.double(), x2.double(), **kw)
    scale = ref.abs().max()
    # half inputs, float32 sums: the only error is rounding the result to the output dtype
    assert ((out.double() - ref).abs().max() / scale) <= tol
    out.backward(torch.ones_like(out))
    assert a.grad.dtype == dtype and b.grad.dtype == dtype
    ra = x1.double().requires_grad_()
    correlate_reference(ra, x2.double(), **kw).sum().backward()
    assert ((a.grad.double() - ra.grad).abs().max() / ra.grad.abs().max()) <= tol


def test_float16_sums_do_not_overflow_or_lose_precision():
    """Values whose float16 partial sums would overflow: float32 accumulation keeps them exact."""
    x = torch.full((1, 4096, 3, 3), 4.0, dtype=torch.float16)
    out = tiledcorr.correlate(x, x / 16, patch_size=1)  # each sum: 4096 * 4 * 0.25 = 4096
    assert torch.equal(out, torch.full_like(out, 4096.0))


@pytest.mark.parametrize("layout", ["transposed", "channels_last", "sliced"])
def test_non_contiguous_inputs(layout):
    shape, kw = (2, 3, 9, 8), dict(patch_size=5, kernel_size=2, padding=1)
    x1, x2 = _inputs(shape)
    if layout == "transposed":
        a, b = x1.transpose(2, 3).contiguous().transpose(2, 3), x2.transpose(2, 3).contiguous().transpose(2, 3)
    elif layout == "channels_last":
        a, b = x1.to(memory_format=torch.channels_last), x2.to(memory_format=torch.channels_last)
    else:
        big1, big2 = torch.zeros(2, 6, 9, 16, dtype=torch.float64), torch.zeros(2, 6, 9, 16, dtype=torch.float64)
        big1[:, ::2, :, ::2], big2[:, ::2, :, ::2] = x1, x2
        a, b = big1[:, ::2, :, ::2], big2[:, ::2, :, ::2]
    assert not a.is_contiguous()
    torch.testing.assert_close(tiledcorr.correlate(a, b, **kw), correlate_reference(x1, x2, **kw))


def test_inputs_are_not_modified():
    x1, x2 = _inputs((2, 3, 8, 9), torch.float16)
    a, b = x1.clone().requires_grad_(), x2.clone().requires_grad_()
    out = tiledcorr.correlate(a, b, patch_size=7, kernel_size=3, padding=2, normalize="channels")
    out.backward(torch.randn_like(out))
    assert torch.equal(a.detach(), x1) and torch.equal(b.detach(), x2)


def test_module_matches_function_and_shows_arguments():
    layer = tiledcorr.SpatialCorrelation(patch_size=5, kernel_size=3, flatten=True, memory_budget="64MiB")
    x1, x2 = _inputs((1, 2, 7, 9))
    expected = tiledcorr.correlate(x1, x2, kernel_size=3, patch_size=5).reshape(1, 25, 5, 7)
    torch.testing.assert_close(layer(x1, x2), expected)
    text = repr(layer)
    assert "patch_size=5" in text and "kernel_size=3" in text and "memory_budget='64MiB'" in text
    assert "stride" not in text  # defaults are not shown


@pytest.mark.parametrize("normalize, divisor", [(None, 1.0), ("channels", 6.0), ("kernel_channels", 54.0), ("sqrt_channels", 6.0**0.5)])
def test_normalize_divides_the_plain_sum(normalize, divisor):
    x1, x2 = _inputs((2, 6, 8, 7))
    out = tiledcorr.correlate(x1, x2, kernel_size=3, patch_size=3, normalize=normalize)
    torch.testing.assert_close(out, correlate_reference(x1, x2, kernel_size=3, patch_size=3) / divisor)


def test_flatten_is_dy_major():
    x1, x2 = _inputs((1, 2, 6, 9))
    flat = tiledcorr.correlate(x1, x2, patch_size=(3, 5), flatten=True)
    full = correlate_reference(x1, x2, patch_size=(3, 5))
    assert flat.shape == (1, 15, 6, 9)
    for ph in range(3):
        for pw in range(5):
            torch.testing.assert_close(flat[:, ph * 5 + pw], full[:, ph, pw])


def test_cpp_sampler_parity():
    scs = pytest.importorskip("spatial_correlation_sampler")
    rng = random.Random(7)
    for _ in range(12):
        shape = (rng.randint(1, 3), rng.randint(1, 5), rng.randint(5, 13), rng.randint(5, 13))
        kw = dict(
            kernel_size=rng.choice([1, 2, 3, (1, 3)]), patch_size=rng.choice([1, 4, 5, (3, 7), 9]),
            stride=rng.choice([1, 2, (2, 1)]), padding=rng.choice([0, 1, (2, 0)]),
            dilation=rng.choice([1, 2]), dilation_patch=rng.choice([1, 2, (1, 3)]),
        )
        x1, x2 = _inputs(shape, seed=rng.randint(0, 10**6))
        expected = scs.spatial_correlation_sample(x1, x2, **kw)
        if any(s <= 0 for s in expected.shape[-2:]):
            continue
        torch.testing.assert_close(tiledcorr.correlate(x1, x2, **kw), expected, rtol=1e-10, atol=1e-10)
