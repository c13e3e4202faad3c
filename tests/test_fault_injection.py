"""Fault injection: a simulated out-of-memory error in the middle of a chunk ends in a
retry with a smaller tiling and a correct result (warned once), or in a clear
MemoryBudgetError; never in a partial or doubly accumulated result."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

import tiledcorr
from tiledcorr.execution import retry
from tiledcorr.planning import registry
from tiledcorr.strategies.tile_matmul import TileMatmul
from tiledcorr.reference import correlate_reference

SHAPE, KW = (2, 3, 8, 9), dict(kernel_size=2, patch_size=5, padding=1)


def _inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(SHAPE, generator=g, dtype=torch.float64), torch.randn(SHAPE, generator=g, dtype=torch.float64)


def _plan():
    p = tiledcorr.plan(SHAPE, dtype=torch.float64, memory_budget="48KiB", requires_grad=True,
                       strategy="tile_matmul", **KW)
    assert p.passes >= 4
    return p


def fail_on_calls(real, calls: set[int]):
    """A wrapper of ``real`` that raises a simulated OOM on the given call numbers (1-based)."""
    count = 0

    def wrapper(*args, **kwargs):
        nonlocal count
        count += 1
        if count in calls:
            raise torch.OutOfMemoryError("CUDA out of memory. (simulated by the test)")
        return real(*args, **kwargs)

    wrapper.calls = lambda: count
    return wrapper


@pytest.fixture(autouse=True)
def fresh_warning(monkeypatch):
    """The retry warning is given once per process: let each test see it afresh."""
    monkeypatch.setattr(retry, "_warned_retry", False)


def _retry_warnings(record) -> list:
    return [w for w in record if issubclass(w.category, RuntimeWarning) and "retrying" in str(w.message)]


def test_forward_oom_mid_chunk_retries_smaller_and_is_correct(monkeypatch):
    x1, x2 = _inputs()
    real_bmm = torch.bmm
    bmm = fail_on_calls(real_bmm, {3})  # after two tiles were written into the output
    monkeypatch.setattr(torch, "bmm", bmm)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        out = tiledcorr.correlate(x1, x2, plan=_plan(), **KW)
        assert bmm.calls() > 3
        again = tiledcorr.correlate(x1, x2, plan=_plan(), **KW)  # no failure
        monkeypatch.setattr(torch, "bmm", fail_on_calls(real_bmm, {1}))
        third = tiledcorr.correlate(x1, x2, plan=_plan(), **KW)  # a second retry: no second warning
    (warning,) = _retry_warnings(record)
    assert "warned once" in str(warning.message)
    expected = correlate_reference(x1, x2, **KW)
    for result in (out, again, third):
        torch.testing.assert_close(result, expected, rtol=1e-10, atol=1e-10)


def test_backward_oom_mid_chunk_does_not_accumulate_twice(monkeypatch):
    x1, x2 = _inputs(1)
    a, b = x1.clone().requires_grad_(), x2.clone().requires_grad_()
    out = tiledcorr.correlate(a, b, plan=_plan(), **KW)
    grad = torch.randn(out.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    backward = fail_on_calls(TileMatmul.backward, {3})  # two tiles already scattered into the gradients
    monkeypatch.setattr(TileMatmul, "backward", backward)
    with pytest.warns(RuntimeWarning, match="retrying"):
        out.backward(grad)
    assert backward.calls() > 3
    ra, rb = x1.clone().requires_grad_(), x2.clone().requires_grad_()
    correlate_reference(ra, rb, **KW).backward(grad)
    torch.testing.assert_close(a.grad, ra.grad, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(b.grad, rb.grad, rtol=1e-10, atol=1e-10)


def _always_oom(monkeypatch, method: str) -> None:
    def oom(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. (simulated by the test)")

    for name in registry.names():
        monkeypatch.setattr(type(registry.get(name)), method, oom)


def test_forward_oom_at_every_size_is_a_memory_budget_error(monkeypatch):
    x1, x2 = _inputs()
    _always_oom(monkeypatch, "forward")
    with pytest.warns(RuntimeWarning), pytest.raises(tiledcorr.MemoryBudgetError, match="smallest tiling") as info:
        tiledcorr.correlate(x1, x2, plan=_plan(), **KW)
    assert isinstance(info.value.__cause__, torch.OutOfMemoryError)


def test_backward_oom_at_every_size_is_a_memory_budget_error(monkeypatch):
    x1, x2 = _inputs()
    a = x1.clone().requires_grad_()
    out = tiledcorr.correlate(a, x2, plan=_plan(), **KW)
    _always_oom(monkeypatch, "backward")
    with pytest.warns(RuntimeWarning), pytest.raises(tiledcorr.MemoryBudgetError, match="smallest tiling"):
        out.sum().backward()
    assert a.grad is None  # no partial gradient was delivered


def test_oom_in_the_nonfinite_path_retries_from_scratch(monkeypatch):
    x1, x2 = _inputs(3)
    x1[0, 0, 0, 0], x2[1, 2, -1, -1] = math.nan, math.inf
    expected = tiledcorr.correlate(x1, x2, plan=_plan(), **KW)
    bmm = fail_on_calls(torch.bmm, {5})  # inside the indicator correlations or the finite part
    monkeypatch.setattr(torch, "bmm", bmm)
    with pytest.warns(RuntimeWarning, match="retrying"):
        out = tiledcorr.correlate(x1, x2, plan=_plan(), **KW)
    assert bmm.calls() > 5
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12, equal_nan=True)
