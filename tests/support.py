"""Shared test helper: a function's forward and both input gradients against a reference."""

from __future__ import annotations

from typing import Callable

import torch


def assert_matches_reference(
    fn: Callable, ref: Callable, x1: torch.Tensor, x2: torch.Tensor, *, rtol: float, atol: float,
    make_grad: Callable[[torch.Tensor], torch.Tensor] = torch.randn_like,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``fn(x1, x2)`` equals ``ref(x1, x2)``, and so do both input gradients for ``make_grad(ref output)``.

    Both run on fresh leaf copies of the inputs. Returns the two outputs.
    """
    a, b = x1.clone().requires_grad_(), x2.clone().requires_grad_()
    out = fn(a, b)
    ra, rb = x1.clone().requires_grad_(), x2.clone().requires_grad_()
    expected = ref(ra, rb)
    torch.testing.assert_close(out, expected, rtol=rtol, atol=atol)
    grad = make_grad(expected)
    out.backward(grad)
    expected.backward(grad)
    torch.testing.assert_close(a.grad, ra.grad, rtol=rtol, atol=atol)
    torch.testing.assert_close(b.grad, rb.grad, rtol=rtol, atol=atol)
    return out, expected


def cpu_strategies() -> tuple[str, ...]:
    """The registered strategies that run float32 images on this CPU (the Triton kernels only interpreted)."""
    import tiledcorr
    from tiledcorr.planning import registry

    geometry = tiledcorr.plan((1, 2, 5, 5), patch_size=3).geometry
    return tuple(n for n in registry.names() if registry.get(n).refusal(geometry, torch.float32, "cpu") is None)
