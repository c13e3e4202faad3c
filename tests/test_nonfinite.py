"""NaN and Inf: exactly the original's in-image semantics (a term counts only when both of
its positions lie inside the image), forward and backward, whatever the plan.

The expectations are computed here, independently of tiledcorr and of
``correlate_reference`` (whose zero-filled views give ``inf * 0 = NaN`` for
excluded terms): :func:`_terms` enumerates the valid terms straight from the
formula of semantics.md section 1, and the IEEE sums are taken over them in
float64 numpy.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

import tiledcorr

from support import cpu_strategies  # noqa: E402

STRATEGIES = cpu_strategies()

PARAMS = ("kernel_size", "patch_size", "stride", "padding", "dilation", "dilation_patch")

# Displacements and padding that reach outside the image, kernels, strides, dilations.
CONFIGS = [
    ((1, 2, 5, 6), dict(patch_size=5)),
    ((2, 2, 6, 5), dict(patch_size=3, padding=2)),
    ((1, 3, 7, 6), dict(kernel_size=2, patch_size=(3, 4), stride=(2, 1), padding=1)),
    ((1, 2, 6, 7), dict(kernel_size=3, patch_size=3, dilation=2, dilation_patch=2, padding=3)),
    ((2, 1, 4, 4), dict(patch_size=7, padding=(1, 2))),
    # Volumes smaller than the inputs: checked after the fast path, recomputed exactly (execution.volume).
    ((1, 24, 5, 6), dict(patch_size=3)),
    ((2, 16, 6, 5), dict(kernel_size=2, patch_size=(1, 3), padding=1)),
]


def _ids(case):
    shape, kw = case
    return "x".join(map(str, shape)) + "-" + ",".join(f"{k}={v}" for k, v in kw.items())


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


def _params(**kw) -> dict[str, tuple[int, int]]:
    return {name: _pair(kw.get(name, 0 if name == "padding" else 1)) for name in PARAMS}


def _out_shape(shape, **kw) -> tuple[int, ...]:
    """``(B, PH, PW, oH, oW)`` from the formula of semantics.md section 1."""
    p = _params(**kw)
    out = [max(0, (n + 2 * pad - ((k - 1) * d + 1)) // s + 1)
           for n, pad, k, d, s in zip(shape[2:], p["padding"], p["kernel_size"], p["dilation"], p["stride"])]
    return (shape[0], *p["patch_size"], *out)


def _terms(shape, **kw):
    """Every valid term ``(ph, pw, h, w, y, x, y2, x2)``: out[:, ph, pw, h, w] gets x1[.., y, x] * x2[.., y2, x2]."""
    H, W = shape[2:]
    p = _params(**kw)
    (kH, kW), (PH, PW), (sH, sW) = p["kernel_size"], p["patch_size"], p["stride"]
    (padH, padW), (lH, lW), (qH, qW) = p["padding"], p["dilation"], p["dilation_patch"]
    oH, oW = _out_shape(shape, **kw)[3:]
    for ph, pw, h, w, i, j in itertools.product(range(PH), range(PW), range(oH), range(oW), range(kH), range(kW)):
        y, x = h * sH - padH + i * lH, w * sW - padW + j * lW
        y2, x2 = y + (ph - (PH - 1) // 2) * qH, x + (pw - (PW - 1) // 2) * qW
        if 0 <= y < H and 0 <= x < W and 0 <= y2 < H and 0 <= x2 < W:
            yield ph, pw, h, w, y, x, y2, x2


def ieee_forward(x1, x2, **kw) -> np.ndarray:
    """``out`` in float64, each sum over its valid terms only, with IEEE arithmetic."""
    a, b = x1.double().numpy(), x2.double().numpy()
    out = np.zeros(_out_shape(tuple(x1.shape), **kw))
    with np.errstate(invalid="ignore", over="ignore"):
        for ph, pw, h, w, y, x, y2, x2 in _terms(tuple(x1.shape), **kw):
            out[:, ph, pw, h, w] += (a[:, :, y, x] * b[:, :, y2, x2]).sum(axis=1)
    return out


def ieee_backward(x1, x2, grad, **kw) -> tuple[np.ndarray, np.ndarray]:
    """``grad1 = sum grad * x2`` and ``grad2 = sum grad * x1`` over the valid terms, IEEE, float64."""
    a, b, g = x1.double().numpy(), x2.double().numpy(), grad.double().numpy()
    g1, g2 = np.zeros(a.shape), np.zeros(b.shape)
    with np.errstate(invalid="ignore", over="ignore"):
        for ph, pw, h, w, y, x, y2, x2 in _terms(tuple(x1.shape), **kw):
            weight = g[:, ph, pw, h, w, None]
            g1[:, :, y, x] += weight * b[:, :, y2, x2]
            g2[:, :, y2, x2] += weight * a[:, :, y, x]
    return g1, g2


def assert_ieee_equal(actual: torch.Tensor, expected: np.ndarray, tol: float) -> None:
    """Same NaN set, same +inf and -inf sets, finite values within ``tol`` of their scale."""
    actual = actual.detach().double().numpy()
    assert actual.shape == expected.shape
    for name, test in (("NaN", np.isnan), ("+inf", np.isposinf), ("-inf", np.isneginf)):
        wrong = np.argwhere(test(actual) != test(expected))
        assert len(wrong) == 0, f"{name} differs at {wrong[:5].tolist()} ({len(wrong)} places)"
    finite = np.isfinite(expected)
    scale = max(1.0, np.abs(expected[finite]).max(initial=0.0))
    assert np.abs(actual[finite] - expected[finite]).max(initial=0.0) <= tol * scale


def _inputs(shape, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=dtype), torch.randn(shape, generator=g, dtype=dtype)


def _plans(smallest_budget, shape, dtype=torch.float64, **kw):
    """One plan per strategy with large tiles, and a plan of many small tiles."""
    smallest = smallest_budget(shape, dtype=dtype, requires_grad=True, **kw)
    plans = [tiledcorr.plan(shape, dtype=dtype, memory_budget="1GiB", requires_grad=True, strategy=s, **kw)
             for s in sorted(STRATEGIES)]
    plans.append(tiledcorr.plan(shape, dtype=dtype, memory_budget=16 * smallest, requires_grad=True, **kw))
    assert plans[-1].passes > max(4, plans[0].passes)
    return plans


# --------------------------------------------------------------------------- one special pixel


def _outputs_reading(shape, which: int, b: int, y: int, x: int, **kw) -> set[tuple[int, ...]]:
    """Output indices ``(b, ph, pw, h, w)`` whose sums include input``which``'s pixel (y, x)."""
    hits = set()
    for ph, pw, h, w, y1, x1, y2, x2 in _terms(shape, **kw):
        if ((y1, x1) if which == 1 else (y2, x2)) == (y, x):
            hits.add((b, ph, pw, h, w))
    return hits


@pytest.mark.parametrize("case", CONFIGS, ids=[_ids(c) for c in CONFIGS])
@pytest.mark.parametrize("which", [1, 2])
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf], ids=["nan", "inf", "-inf"])
def test_special_pixel_reaches_exactly_the_outputs_that_read_it(case, which, value, smallest_budget):
    """One special pixel per batch item (a corner, a border, the interior)."""
    _, C, H, W = case[0]
    shape, kw = (3, C, H, W), case[1]
    x1, x2 = _inputs(shape, torch.float32)
    pixels = [(0, 0, 0, 0), (1, C - 1, H - 1, W // 2), (2, C // 2, H // 2, W - 1)]
    special_input = x1 if which == 1 else x2
    expected = set()
    for b, c, y, x in pixels:
        special_input[b, c, y, x] = 0.0
        expected |= _outputs_reading(shape, which, b, y, x, **kw)
    zeroed = tiledcorr.correlate(x1, x2, **kw)
    for b, c, y, x in pixels:
        special_input[b, c, y, x] = value
    for p in _plans(smallest_budget, shape, torch.float32, **kw)[::2]:
        out = tiledcorr.correlate(x1, x2, plan=p, **kw)
        special = ~torch.isfinite(out) if not math.isnan(value) else torch.isnan(out)
        assert set(map(tuple, special.nonzero().tolist())) == expected, p.strategy
        if not math.isnan(value):  # partners are non-zero: one infinite term per sum, no NaN
            assert not out.isnan().any()
        # The other sums do not read the pixels: they equal the sums with the pixels set to 0, up to
        # float32 rounding of another summation order (a plan's tiles, the BLAS's kernels): 1.8e-6 was
        # seen on a sum of 64 products on an AMD EPYC VM.
        torch.testing.assert_close(out[~special], zeroed[~special], rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------- many special values


def _sprinkle(x: torch.Tensor, seed: int) -> torch.Tensor:
    """Put NaN, +inf, -inf and zeros at random places, borders included."""
    g = torch.Generator().manual_seed(seed)
    x = x.clone()
    flat = x.view(-1)
    picks = torch.randperm(flat.numel(), generator=g)[:8]
    for k, idx in enumerate(picks.tolist()):
        flat[idx] = (math.nan, math.inf, -math.inf, 0.0)[k % 4]
    x[..., 0, 0] = 0.0  # a zero in every corner makes inf * 0 terms likely
    return x


@pytest.mark.parametrize("case", CONFIGS, ids=[_ids(c) for c in CONFIGS])
def test_forward_and_backward_match_the_in_image_ieee_semantics(case, smallest_budget):
    shape, kw = case
    x1, x2 = _inputs(shape, seed=3)
    x1, x2 = _sprinkle(x1, 1), _sprinkle(x2, 2)
    expected = ieee_forward(x1, x2, **kw)
    grad = torch.randn(expected.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    grad.view(-1)[::7] = 0.0  # zero weights times Inf are NaN, as in torch's own autograd
    e1, e2 = ieee_backward(x1, x2, grad, **kw)
    for p in _plans(smallest_budget, shape, **kw):
        a, b = x1.clone().requires_grad_(), x2.clone().requires_grad_()
        out = tiledcorr.correlate(a, b, plan=p, **kw)
        assert_ieee_equal(out, expected, 1e-12)
        out.backward(grad)
        assert_ieee_equal(a.grad, e1, 1e-12)
        assert_ieee_equal(b.grad, e2, 1e-12)


def test_nonfinite_upstream_gradient_with_finite_inputs():
    """A NaN or Inf in grad_out only: each input gradient sums over exactly the valid terms."""
    shape, kw = (1, 2, 5, 5), dict(patch_size=5, padding=1)
    x1, x2 = _inputs(shape, seed=5)
    x2[0, 1, 2, 2] = 0.0
    a, b = x1.clone().requires_grad_(), x2.clone().requires_grad_()
    out = tiledcorr.correlate(a, b, **kw)
    grad = torch.randn_like(out)
    grad[0, 0, 0, 0, 0], grad[0, 4, 4, -1, -1], grad[0, 2, 2, 3, 3] = math.nan, math.inf, -math.inf
    out.backward(grad)
    e1, e2 = ieee_backward(x1, x2, grad, **kw)
    assert_ieee_equal(a.grad, e1, 1e-12)
    assert_ieee_equal(b.grad, e2, 1e-12)


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
@pytest.mark.parametrize("normalize", [None, "channels"])
def test_low_precision_and_normalized(dtype, tol, normalize):
    shape, kw = (2, 3, 6, 6), dict(kernel_size=2, patch_size=5, padding=2)
    x1, x2 = _inputs(shape, seed=6)
    x1, x2 = _sprinkle(x1, 7).to(dtype), _sprinkle(x2, 8).to(dtype)
    out = tiledcorr.correlate(x1, x2, normalize=normalize, **kw)
    assert out.dtype == dtype
    expected = ieee_forward(x1, x2, **kw) / (3 if normalize else 1)
    assert_ieee_equal(out, expected, tol)


def test_opposite_infinities_in_one_sum_are_nan_and_finite_overflow_is_kept():
    x1 = torch.tensor([[[[1.0]], [[1.0]]]])  # (1, 2, 1, 1)
    x2 = torch.tensor([[[[math.inf]], [[-math.inf]]]])
    assert tiledcorr.correlate(x1, x2).isnan().all()
    big = torch.full((1, 2, 1, 1), 3e38)
    assert tiledcorr.correlate(big, big).isposinf().all()  # an overflow of finite values
    x2 = torch.tensor([[[[-math.inf]], [[3e38]]]])
    assert tiledcorr.correlate(big, x2).isnan().all()  # -inf + (overflow to +inf) is NaN


def test_volumes_smaller_than_their_inputs_are_checked_after_the_fast_path(monkeypatch):
    """Only the volume is summed (not the inputs), and a NaN in it sends the call down the exact path."""
    from tiledcorr.execution import nonfinite

    checked, exact = [], []
    all_finite, run_forward = nonfinite.all_finite, nonfinite.run_forward
    monkeypatch.setattr(nonfinite, "all_finite", lambda *t: checked.append([x.shape for x in t]) or all_finite(*t))
    monkeypatch.setattr(nonfinite, "run_forward", lambda *a, **k: exact.append(1) or run_forward(*a, **k))
    x1, x2 = _inputs((1, 24, 5, 6), torch.float32)
    tiledcorr.correlate(x1, x2, patch_size=3)
    assert checked == [[(1, 3, 3, 5, 6)]] and not exact
    x2[0, 5, 0, 0] = math.inf  # meets the zero padding of displacements that leave the image: NaN there
    out = tiledcorr.correlate(x1, x2, patch_size=3)
    assert exact and not out.isnan().any()
    assert_ieee_equal(out.double(), ieee_forward(x1.double(), x2.double(), patch_size=3), 1e-5)


def test_finite_inputs_never_take_the_nonfinite_path(monkeypatch):
    from tiledcorr.execution import nonfinite

    def fail(*args, **kwargs):
        raise AssertionError("the non-finite path ran for finite inputs")

    monkeypatch.setattr(nonfinite, "run_forward", fail)
    monkeypatch.setattr(nonfinite, "run_backward", fail)
    a, b = (t.requires_grad_() for t in _inputs((1, 2, 5, 5)))
    tiledcorr.correlate(a, b, patch_size=3, padding=1).sum().backward()
