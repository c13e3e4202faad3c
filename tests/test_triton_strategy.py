"""The ``triton`` strategy in the registry: planned, forced, run end to end (Triton interpreter on CPU).

The interpreter decides when triton's kernels are decorated, so the runs
happen in a fresh process with ``TRITON_INTERPRET=1`` set before tiledcorr
is imported. Tiny cases only: the interpreter runs each program in Python.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

import tiledcorr
from tiledcorr.planning import registry

pytest.importorskip("triton")

SCRIPT = textwrap.dedent(r'''
    import math, torch, tiledcorr
    from tiledcorr.reference import correlate_reference

    g = torch.Generator().manual_seed(0)
    x1, x2 = torch.randn(1, 16, 5, 7, generator=g), torch.randn(1, 16, 5, 7, generator=g)
    kw = dict(patch_size=(3, 4), stride=(1, 2), padding=1, dilation_patch=(2, 1))

    # The default plan on the CPU never picks the interpreter; forcing it does.
    assert tiledcorr.plan(x1.shape, **kw).strategy != "triton"
    p = tiledcorr.plan(x1.shape, **kw, strategy="triton", requires_grad=True)
    assert p.strategy == "triton" and p.forward_workspace_bytes == 0 and "triton" in str(p)

    def close(got, expected, what, tol=1e-5):
        err = (got.double() - expected).abs().max().item() / max(expected.abs().max().item(), 1e-30)
        assert err < tol, (what, err)

    a, b = x1.clone().requires_grad_(), x2.clone().requires_grad_()
    out = tiledcorr.correlate(a, b, plan=p, **kw)
    ra, rb = x1.double().requires_grad_(), x2.double().requires_grad_()
    ref = correlate_reference(ra, rb, **kw)
    close(out, ref, "volume")
    grad = torch.randn(ref.shape, generator=g)
    out.backward(grad)
    ref.backward(grad.double())
    close(a.grad, ra.grad, "grad1")
    close(b.grad, rb.grad, "grad2")

    # One reduction through the strategy's fused path (the kernels' own tests cover all four).
    for reduction, k in (("max", None),):
        plan = tiledcorr.plan(x1.shape, **kw, strategy="triton", reduction=reduction, k=k,
                              requires_grad=reduction != "argmax")
        a, b = x1.clone().requires_grad_(), x2.clone().requires_grad_()
        got = tiledcorr.correlate_reduce(a, b, **kw, reduction=reduction, k=k, plan=plan)
        tiled = tiledcorr.correlate_reduce(x1.double(), x2.double(), **kw, reduction=reduction, k=k)
        close(got, tiled, reduction)
        got.sum().backward()
        ea, eb = x1.double().requires_grad_(), x2.double().requires_grad_()
        tiledcorr.correlate_reduce(ea, eb, **kw, reduction=reduction, k=k).sum().backward()
        close(a.grad, ea.grad, reduction + " grad1", 1e-4)
        close(b.grad, eb.grad, reduction + " grad2", 1e-4)

    # NaN and Inf go down the exact path on a per-tile plan (tests/test_nonfinite.py checks that
    # path against an independent float64 construction; the zero-padded reference is not exact there).
    x1[0, 3, 4, 5], x2[0, 0, 2, 2] = math.nan, math.inf
    out = tiledcorr.correlate(x1, x2, plan=tiledcorr.plan(x1.shape, **kw, strategy="triton"), **kw)
    exact = tiledcorr.correlate(x1, x2, plan=tiledcorr.plan(x1.shape, **kw, strategy="row_matmul"), **kw)
    assert torch.isnan(out).any() and torch.isinf(out).any()
    torch.testing.assert_close(out, exact, equal_nan=True, rtol=0, atol=0)
    print("ok")
''')


def test_triton_strategy_end_to_end_under_the_interpreter():
    env = dict(os.environ, TRITON_INTERPRET="1")
    run = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0 and run.stdout.strip().endswith("ok"), run.stdout + run.stderr


@pytest.mark.parametrize("case, reason", [
    (dict(kernel_size=3), "kernel_size > 1"),
    (dict(dtype=torch.float64), "float64"),
    (dict(shape=(1, 4, 6, 7, 8)), "3-D volumes"),
    (dict(), "CPU tensors without TRITON_INTERPRET=1"),
])
def test_refusals_name_their_reason(case, reason):
    shape = case.pop("shape", (1, 4, 9, 11))
    with pytest.raises(tiledcorr.ArgumentValueError, match=f"triton: {reason}"):
        tiledcorr.plan(shape, patch_size=3, strategy="triton", **case)


def test_flownet_crops_and_negative_padding_are_refused():
    from tiledcorr.compat.flownet import flownet_geometry

    geometry = flownet_geometry((1, 4, 16, 16), 0, 1, 4, 1, 2)
    reason = registry.get("triton").refusal(geometry, torch.float16, "cuda")
    assert reason in ("FlowNet's cropped output (out_limit)", "negative padding")


def test_whole_plan_strategies_have_no_workspace_and_rank_behind_on_cpu():
    strategy = registry.get("triton")
    assert strategy.runs_whole_plan
    from tiledcorr.planning.tiling import TileDims, Tiling

    geometry = tiledcorr.plan((1, 4, 9, 11), patch_size=3).geometry
    assert strategy.buffers(TileDims.of_tiling(geometry, Tiling("triton", 1, (9, 11), (3, 3))), True) == {}
