"""Plans of one small tile (every tiny call) run as tile_matmul's fixed sequence of tensor ops (OneTile).

The program must be taken where it applies, give what the tile loop gives
(and the float64 reference), forward and backward, for every parameter that
keeps the plan to one tile, and stay out of the way everywhere else.
"""

from __future__ import annotations

import itertools

import pytest
import torch

import tiledcorr
from tiledcorr.reference import correlate_reference
from tiledcorr.strategies import tile_matmul
from tiledcorr.strategies.tile_matmul import OneTile, TileMatmul

from support import assert_matches_reference

# Odd, non-square shapes small enough for one small tile; every parameter that still leaves one tile
# (dilation_patch > 1 at stride 1 makes several position classes, so several tiles: see the declining test).
SHAPES = [(1, 3, 5, 7), (2, 4, 4, 3)]
PARAMS = [dict(patch_size=p, stride=s, padding=pad, dilation=d)
          for p, s, pad, d in itertools.product([1, 3, (5, 3)], [1, (2, 1)], [0, (2, 1)], [1, 2])]


def _tile_matmul_plan(shape, **kw):
    return tiledcorr.plan(shape, dtype=torch.float64, requires_grad=True, strategy="tile_matmul", **kw)


class _Spy:
    """Counts the programs the engine runs: forward bands, and backwards (accumulating or new gradients)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.bands = self.backwards = 0
        band, grad_product = OneTile.band, OneTile._grad_product

        def counting_band(program, *args):
            self.bands += 1
            return band(program, *args)

        def counting_grad_product(program, *args):
            self.backwards += 1
            return grad_product(program, *args)

        monkeypatch.setattr(OneTile, "band", counting_band)
        monkeypatch.setattr(OneTile, "_grad_product", counting_grad_product)


def _without_program(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(TileMatmul, "one_tile", lambda self, geometry, tiling: None)


@pytest.mark.parametrize("normalize", [None, "channels"])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("kw", PARAMS, ids=lambda kw: "-".join(f"{k[0]}{v}" for k, v in kw.items()))
def test_one_tile_plans_match_reference_and_tile_loop(shape, kw, normalize, monkeypatch):
    gen = torch.Generator().manual_seed(1)
    x1, x2 = (torch.randn(shape, generator=gen, dtype=torch.float64) for _ in range(2))
    plan = _tile_matmul_plan(shape, **kw)
    assert tile_matmul.one_tile(plan.geometry, plan.tiling) is not None
    spy = _Spy(monkeypatch)
    divisor = shape[1] if normalize else 1  # a scale of 1 reads input1 in place, another scales a copy
    fast = lambda a, b: tiledcorr.correlate(a, b, normalize=normalize, plan=plan, **kw)  # noqa: E731
    ref = lambda a, b: correlate_reference(a, b, **kw) / divisor  # noqa: E731
    out, _ = assert_matches_reference(fast, ref, x1, x2, rtol=1e-12, atol=1e-12)
    assert (spy.bands, spy.backwards) == (1, 1)
    grad = torch.randn(out.shape, generator=gen, dtype=torch.float64)

    def values_and_grads():
        a, b = x1.clone().requires_grad_(), x2.clone().requires_grad_()
        y = fast(a, b)
        y.backward(grad)
        return y.detach(), a.grad, b.grad

    with_program = values_and_grads()
    _without_program(monkeypatch)
    loop = values_and_grads()
    assert (spy.bands, spy.backwards) == (2, 2)  # the loop did not run the program
    for got, expected in zip(with_program, loop):
        torch.testing.assert_close(got, expected, rtol=1e-14, atol=1e-14)


@pytest.mark.parametrize("need", [(True, False), (False, True)])
def test_only_the_needed_gradient_is_computed(need):
    gen = torch.Generator().manual_seed(2)
    x1, x2 = (torch.randn(2, 3, 5, 7, generator=gen, dtype=torch.float64) for _ in range(2))
    a, b = x1.clone().requires_grad_(need[0]), x2.clone().requires_grad_(need[1])
    tiledcorr.correlate(a, b, patch_size=3, padding=1).sum().backward()
    ra, rb = x1.clone().requires_grad_(need[0]), x2.clone().requires_grad_(need[1])
    correlate_reference(ra, rb, patch_size=3, padding=1).sum().backward()
    for got, expected in ((a.grad, ra.grad), (b.grad, rb.grad)):
        assert (got is None) == (expected is None)
        if expected is not None:
            torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


def test_non_contiguous_inputs_and_gradients(monkeypatch):
    spy = _Spy(monkeypatch)
    gen = torch.Generator().manual_seed(3)
    x1, x2 = (torch.randn(2, 3, 7, 5, generator=gen, dtype=torch.float64).transpose(2, 3) for _ in range(2))
    fn = lambda a, b: tiledcorr.correlate(a, b, patch_size=3)  # noqa: E731
    ref = lambda a, b: correlate_reference(a, b, patch_size=3)  # noqa: E731
    # A transposed gradient: the band copy must read it through its strides.
    assert_matches_reference(fn, ref, x1, x2, rtol=1e-12, atol=1e-12,
                             make_grad=lambda t: torch.randn(t.shape[::-1], dtype=t.dtype).permute(4, 3, 2, 1, 0))
    assert (spy.bands, spy.backwards) == (1, 1)


def test_gradcheck():
    gen = torch.Generator().manual_seed(4)
    x1, x2 = (torch.randn(1, 2, 4, 5, generator=gen, dtype=torch.float64, requires_grad=True) for _ in range(2))
    fn = lambda a, b: tiledcorr.correlate(a, b, patch_size=(3, 5), stride=(1, 2), padding=1, normalize="channels")  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x1, x2))


@pytest.mark.parametrize("case", [
    ("several tiles", dict(patch_size=3, dilation_patch=2), torch.float64),
    ("kernel window", dict(patch_size=3, kernel_size=3), torch.float64),
    ("half inputs", dict(patch_size=3), torch.bfloat16),
], ids=lambda case: case[0])
def test_program_declines_what_it_does_not_cover(case, monkeypatch):
    _, kw, dtype = case
    spy = _Spy(monkeypatch)
    gen = torch.Generator().manual_seed(5)
    x1, x2 = (torch.randn(1, 3, 6, 5, generator=gen).to(dtype) for _ in range(2))
    out = tiledcorr.correlate(x1, x2, **kw)
    expected = correlate_reference(x1.double(), x2.double(), **kw).to(dtype)
    tol = 1e-2 if dtype == torch.bfloat16 else 1e-12
    torch.testing.assert_close(out, expected, rtol=tol, atol=tol)
    assert spy.bands == 0


def test_large_tiles_are_not_one_tile_programs():
    plan = tiledcorr.plan((1, 8, 64, 64), patch_size=9, memory_budget="1GiB")
    assert tile_matmul.one_tile(plan.geometry, plan.tiling) is None


def test_nan_inputs_still_take_the_exact_path():
    x1, x2 = torch.randn(1, 2, 5, 4), torch.randn(1, 2, 5, 4)
    x2[0, 0, 0, 0] = float("inf")  # in the region a matmul would multiply by zero padding
    out = tiledcorr.correlate(x1, x2, patch_size=3)
    expected = correlate_reference(x1.double(), x2.double(), patch_size=3).float()
    torch.testing.assert_close(out, expected, equal_nan=True)


@pytest.mark.parametrize("where", ["input1", "input2", "gradient"])
def test_nonfinite_values_are_caught_after_the_program(where, monkeypatch):
    """A NaN or Inf makes some of the program's products NaN (inf * 0 off the band or in the padding):
    its results are checked after it runs, and the exact path gives the in-image IEEE values instead."""
    from test_nonfinite import _sprinkle, assert_ieee_equal, ieee_backward, ieee_forward

    spy = _Spy(monkeypatch)
    shape, kw = (1, 3, 5, 7), dict(patch_size=3, padding=1)
    gen = torch.Generator().manual_seed(6)
    x1, x2 = (torch.randn(shape, generator=gen, dtype=torch.float64) for _ in range(2))
    if where != "gradient":
        x1, x2 = (_sprinkle(x1, 1), x2) if where == "input1" else (x1, _sprinkle(x2, 2))
    a, b = x1.clone().requires_grad_(), x2.clone().requires_grad_()
    out = tiledcorr.correlate(a, b, **kw)
    expected = ieee_forward(x1, x2, **kw)
    assert_ieee_equal(out, expected, 1e-12)
    grad = torch.randn(expected.shape, dtype=torch.float64, generator=gen)
    if where == "gradient":
        grad = _sprinkle(grad, 3)
    out.backward(grad)
    e1, e2 = ieee_backward(x1, x2, grad, **kw)
    assert_ieee_equal(a.grad, e1, 1e-12)
    assert_ieee_equal(b.grad, e2, 1e-12)
    assert spy.bands >= 1 and spy.backwards >= 1  # the program ran first
    # The program alone would be wrong here: somewhere an exact value is finite where its result is not.
    plan = tiledcorr.plan(shape, dtype=torch.float64, requires_grad=True, **kw)
    program = tile_matmul.one_tile(plan.geometry, plan.tiling)
    got = [program.volume(x1, x2, 1.0), *program.gradients(x1, x2, grad, True, True, 1.0)]
    assert any((~torch.isfinite(g) & torch.isfinite(torch.as_tensor(e))).any() for g, e in zip(got, [expected, e1, e2]))
